"""Atomic writes: the old file or the new one, never half of one, and no temporary left behind."""
import os

import pytest
import torch
from torch import nn

import adaptive
from adaptive.atomic import atomic_path


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "results.md"
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".md" and not tmp.exists()
        tmp.write_text("old")
    assert path.read_text() == "old"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed while writing")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.md"]


def test_an_os_error_names_the_destination_not_the_temporary(tmp_path):
    """A writer's OSError naming the temporary file (a full disk) named a file the caller never saw;
    nested atomic writes (graphs.write's writers) named a temporary of a temporary. It names the
    destination, and the temporary is still removed; os.replace's error names the destination once."""
    import errno

    path = tmp_path / "out.json"
    with pytest.raises(OSError) as e:
        with atomic_path(path) as tmp, atomic_path(tmp) as inner:
            inner.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device", str(inner))
    assert e.value.filename == str(path) and str(e.value).endswith(f"No space left on device: {str(path)!r}")
    assert not list(tmp_path.iterdir())
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")  # a folder in the way: os.replace fails
    with pytest.raises(OSError) as e:
        with atomic_path(tmp_path / "taken") as tmp:
            tmp.write_text("new")
    assert e.value.filename == str(tmp_path / "taken") and e.value.filename2 is None
    assert str(e.value).endswith(f": {str(tmp_path / 'taken')!r}"), str(e.value)  # not "... -> None"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_long_name_the_file_system_takes_is_written_through_a_shorter_temporary(tmp_path):
    """The temporary file's name adds some 30 bytes to the file's: names of 225 to 255 bytes, which the
    file system takes, failed (graphs.write(g, LONG.json) nested two), and Path.exists on the temporary
    then raised again, naming it. Its stem is cut short now, its suffix kept; a name too long names itself."""
    from adaptive.atomic import temp_name, temp_writer
    import graphs

    NAME_MAX = 255  # bytes in a file name (ext4, tmpfs, ...)

    g = graphs.build(model=nn.Linear(2, 3))
    name = "é" * ((NAME_MAX - len(".graphml.gz")) // 2) + ".graphml.gz"  # 255 bytes
    short = temp_name(name, 12345, "0123abcd")
    assert len(os.fsencode(short)) <= NAME_MAX and short.endswith(".tmp.gz") and temp_writer(short) == 12345
    graphs.write(g, tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name] and graphs.from_networkx(
        __import__("networkx").read_graphml(tmp_path / name)).num_edges == g.num_edges
    too_long = tmp_path / ("n" * NAME_MAX + ".json")
    with pytest.raises(OSError) as e:
        graphs.write(g, too_long)
    assert e.value.filename == str(too_long) and [p.name for p in tmp_path.iterdir()] == [name]

@pytest.mark.parametrize("below", ["x.json", "a/b/x.json"])
def test_a_file_where_the_folder_should_be_is_named_as_a_file(below, tmp_path):
    """It raised a bare "File exists" naming the file in the way, as if the destination were taken."""
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(NotADirectoryError, match=r"cannot write .*inside a file, not a folder.*: '.*notes'$") as e:
        with atomic_path(tmp_path / "notes" / below) as tmp:
            tmp.write_text("new")
    assert e.value.filename == str(tmp_path / "notes") and (tmp_path / "notes").read_text() == "mine"

def test_files_get_the_usual_permissions_not_a_private_temp_file(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.pt") as tmp:
            torch.save({"a": torch.ones(2)}, tmp)
    finally:
        os.umask(old)
    assert (tmp_path / "w.pt").stat().st_mode & 0o777 == 0o644


def test_connectome_save_failure_keeps_the_earlier_file(tmp_path, monkeypatch):
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    path = tmp_path / "c.safetensors"
    conn.save(path)
    before = path.read_bytes()
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        open(filename, "wb").write(b"trunc")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        conn.save(path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_files_written_atomically_get_the_usual_permissions(tmp_path):
    import os
    import stat

    import torch

    import adaptive

    conn = adaptive.Connectome(torch.nn.Sequential(torch.nn.Linear(3, 2)))
    conn.save(tmp_path / "c.safetensors")  # safetensors alone writes a private 0600 file
    (tmp_path / "plain.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "c.safetensors").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)


def test_write_text_makes_the_folder_and_replaces_the_file_whole(tmp_path):
    from adaptive.atomic import write_text

    out = tmp_path / "results" / "table.md"
    assert write_text(out, "first\n") == out and out.read_text() == "first\n"
    write_text(out, "second\n")
    assert out.read_text() == "second\n" and sorted(p.name for p in out.parent.iterdir()) == ["table.md"]


def _dead_pid() -> int:
    """The id of a process that has ended (a child run and waited for)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


@pytest.mark.parametrize("name", ["a.b" + "c" * 240 + ".", "v1.2 " + "ü" * 115 + "."])
def test_a_shortened_temporary_is_still_one_the_sweep_and_errors_recognise(name, tmp_path):
    """A long name without a suffix but with a dot in it (one ending in "."): cutting its stem short left
    ".a.bccc.PID-HEX.tmp", whose name part now had a suffix (".bccc") that the temporary's ("") was not,
    so sweep_stale_temps never removed it after a crash and an error inside the write named it, not the file."""
    import errno

    from adaptive.atomic import sweep_stale_temps, temp_name, temp_writer, write_text

    assert 225 <= len(os.fsencode(name)) <= 255
    dead = _dead_pid()
    stale = temp_name(name, dead, "0123abcd")
    assert len(os.fsencode(stale)) <= 255 and temp_writer(stale) == dead
    (tmp_path / stale).write_text("x")
    assert [p.name for p in sweep_stale_temps(tmp_path)] == [stale] and list(tmp_path.iterdir()) == []
    with pytest.raises(OSError) as e:
        with atomic_path(tmp_path / name) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert e.value.filename == str(tmp_path / name) and list(tmp_path.iterdir()) == []
    assert write_text(tmp_path / name, "whole").read_text() == "whole"


def test_sweep_removes_only_temporaries_of_writers_that_are_gone(tmp_path):
    """A run killed between an atomic write and its rename left .NAME.PID-HEX.tmpSUFFIX for good:
    sweep_stale_temps removes exactly those (writer gone), and nothing else."""
    from adaptive.atomic import sweep_stale_temps, temp_writer

    dead, live = _dead_pid(), os.getppid()
    with atomic_path(tmp_path / "metrics.csv") as tmp:  # the name atomic_path makes is the pattern swept
        assert temp_writer(tmp.name) == os.getpid()
        tmp.write_text("x")
    stale = [f".metrics.csv.{dead}-0123abcd.tmp.csv", f".checkpoint.pt.{dead}-deadbeef.tmp.pt",
             f".LICENSE.{dead}-00ff00ff.tmp"]
    kept = [f".metrics.csv.{live}-0123abcd.tmp.csv",  # a live writer (another tool writing now)
            f".metrics.csv.{os.getpid()}-0123abcd.tmp.csv",  # this process
            f".metrics.csv.{dead}-0123abcd.tmp.pt",  # another suffix than its name's: not atomic_path's
            f".metrics.csv.{dead}-0123abcd.tmp.csv.bak", f"metrics.csv.{dead}-0123abcd.tmp.csv",
            f".metrics.csv.{dead}-0123ABCD.tmp.csv", "notes.tmp.csv", "metrics.csv"]
    for n in stale + kept:
        (tmp_path / n).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / stale[0]).write_text("x")  # subfolders are the caller's to name
    removed = sweep_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["sub"])
    assert (tmp_path / "sub" / stale[0]).exists()
    assert sweep_stale_temps(tmp_path / "none") == []


def test_a_symbolic_link_is_written_through_and_kept(tmp_path):
    """Renaming onto a link replaced the link with a file and left the file it pointed to as it was;
    every ordinary write (open(path, 'w')) writes the file a link points to."""
    from adaptive.atomic import atomic_torch_save, write_text

    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "notes.txt"
    target.write_text("old")
    (tmp_path / "middle.txt").symlink_to(target)
    link = tmp_path / "notes.txt"
    link.symlink_to(tmp_path / "middle.txt")  # a chain of two links
    write_text(link, "new")
    assert link.is_symlink() and (tmp_path / "middle.txt").is_symlink()
    assert target.read_text() == "new"
    dangling = tmp_path / "model.pt"
    dangling.symlink_to(tmp_path / "runs" / "model.pt")  # a link to a file not written yet
    atomic_torch_save({"a": 1}, dangling)
    assert dangling.is_symlink() and (tmp_path / "runs" / "model.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["model.pt", "notes.txt"]  # no temporary left


def test_a_link_to_a_missing_folder_is_refused_not_made(tmp_path):
    from adaptive.atomic import write_text

    link = tmp_path / "out.txt"
    link.symlink_to(tmp_path / "unmounted" / "out.txt")
    with pytest.raises(FileNotFoundError, match="symbolic link to .*unmounted.*whose folder does not exist"):
        write_text(link, "x")
    assert not (tmp_path / "unmounted").exists() and link.is_symlink()


def test_a_fifo_is_refused_not_replaced_by_a_file(tmp_path):
    """An atomic write onto a device or a FIFO renamed a file onto it: writing to /dev/full as root
    replaced the machine's /dev/full with a regular file."""
    import stat

    from adaptive.atomic import write_text

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="it is a FIFO, not a regular file"):
        write_text(fifo, "x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def _synced(monkeypatch):
    """Record what os.fsync syncs: (the file or folder's name, whether it is a folder, the names in the
    folder of the file at that moment)."""
    import stat

    real, synced = os.fsync, []

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((os.path.basename(target), stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name the synced file")
    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.mark.parametrize("writer", ["write_text", "graph_json", "graph_graphml"])
def test_every_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(writer, tmp_path, monkeypatch):
    """Checkpoints were synced, exports and summaries were not, and no folder was after the rename: a
    power cut could leave an empty summary.json or a cut-short export under its final name, or lose the
    rename. Every atomic write now syncs the temporary file, then the folder once it is renamed."""
    from adaptive.atomic import temp_target, write_text

    synced = _synced(monkeypatch)
    if writer == "write_text":
        path = tmp_path / "summary.json"
        write_text(path, "{}")
    else:
        import graphs
        from torch import nn

        from adaptive import Connectome

        g = graphs.build(Connectome(nn.Sequential(nn.Linear(3, 2))), "unit")
        path = tmp_path / ("g.json" if writer == "graph_json" else "g.graphml")
        synced.clear()
        graphs.write(g, path)
    def final(name):  # (a writer that writes through an atomic_path of its own: a temporary of the temporary)
        while temp_target(name) is not None:
            name = temp_target(name)
        return name

    files = [n for n, folder in synced if not folder]
    assert files and all(n != path.name and final(n) == path.name for n in files), synced
    assert synced[-1] == (tmp_path.name, True), synced  # the folder, last: after the rename


@pytest.mark.parametrize("writer", ["write_text", "atomic_torch_save"])
def test_a_file_is_synced_through_a_handle_open_for_writing(writer, tmp_path, monkeypatch):
    """The durable write reopened its temporary file read-only to sync it: POSIX syncs that, but Windows's
    fsync (``_commit``: FlushFileBuffers needs write access) answers ``[Errno 9] Bad file descriptor``, so
    every atomic write failed there, checkpoints' too, whose own sync had gone through the writer's handle.
    os.fsync here refuses a read-only file descriptor as Windows does; a folder's sync is left to fail as
    it may (it is skipped where the system refuses it)."""
    import errno
    import fcntl
    import stat

    import torch

    from adaptive.atomic import atomic_torch_save, write_text

    real = os.fsync

    def windows_fsync(fd):
        if not stat.S_ISDIR(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd)

    monkeypatch.setattr(os, "fsync", windows_fsync)
    path = tmp_path / ("summary.json" if writer == "write_text" else "ckpt.pt")
    if writer == "write_text":
        write_text(path, "{}")
        assert path.read_text() == "{}"
    else:
        atomic_torch_save({"w": torch.ones(2)}, path)
        assert torch.equal(torch.load(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_file_left_read_only_is_still_synced(tmp_path, monkeypatch):
    """A file the process may not open for writing (its writer left it read-only to us) is synced through
    a read-only handle, as POSIX allows, rather than refused."""
    import adaptive.atomic as atomic

    real_open, opened = os.open, []

    def no_write_access(path, flags, *a, **kw):
        if os.path.isfile(path) and flags & os.O_ACCMODE != os.O_RDONLY:
            raise PermissionError(13, "Permission denied", str(path))
        opened.append(flags & os.O_ACCMODE)
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", no_write_access)
    path = tmp_path / "summary.json"
    atomic.write_text(path, "{}")
    assert path.read_text() == "{}" and os.O_RDONLY in opened
