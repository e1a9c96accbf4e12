import os

import pytest

from resnext.paths import atomic_write


def test_atomic_write_gives_the_umask_mode_and_keeps_the_old_file_on_failure(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "out" / "file.bin", lambda handle: handle.write(b"first"))
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)  # not mkstemp's private 0600

    def torn(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, torn)
    assert path.read_bytes() == b"first"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]  # no temporary file left behind
