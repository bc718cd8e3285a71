"""rtk.engine_meta: reading the sidecar `rtk build` writes beside an engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_fake_engine

from rtk.engine_meta import FORMAT, read_sidecar, sidecar_path
from rtk.errors import RtkError


def test_reads_the_sidecar_and_checks_the_engine(tmp_path: Path):
    engine = tmp_path / "model.int8.plan"
    written = write_fake_engine(engine, precision="int8")
    assert sidecar_path(engine) == tmp_path / "model.int8.plan.json"
    assert read_sidecar(engine) == written and written["format"] == FORMAT

    engine.write_bytes(engine.read_bytes()[:-1])  # truncated after the build
    with pytest.raises(RtkError, match="does not match its sidecar's engine_sha256"):
        read_sidecar(engine)
    assert read_sidecar(engine, verify_engine=False)["precision"] == "int8"


@pytest.mark.parametrize("text, message", [
    (None, "model.plan.json is missing"),
    ("{not json", "is not readable JSON"),
    ("[1, 2]", "is not an rtk engine sidecar (format 'a JSON list'"),
    ('{"format": "rtk.engine/0"}', "format 'rtk.engine/0', expected 'rtk.engine/1'"),
])
def test_bad_sidecars(tmp_path: Path, text: str | None, message: str):
    engine = tmp_path / "model.plan"
    write_fake_engine(engine)
    if text is None:
        sidecar_path(engine).unlink()
    else:
        sidecar_path(engine).write_text(text)
    with pytest.raises(RtkError) as error:
        read_sidecar(engine)
    assert message in str(error.value)
