"""Issue 43, "nothing lost, nothing counted twice": one writer per output (two real processes),
rows met twice refused, torn lines recovered only in files of this tool, file-system errors as
one line (exit 2) with the results printed before optional files are written."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from smoothinf.cli import main
from smoothinf.errors import ConfigError, OutputBusyError
from smoothinf.utils import lock_path, output_lock

CERT = ["--sigma", "0.25", "--n0", "5", "--n", "20", "--max-examples", "4", "--examples-per-step", "3"]
GRID = ["--attacks", "pgd", "--steps", "2", "--votes", "hard", "--sigmas", "0.1", "--ms", "2"]
GRID += ["--eps", "0.1", "--runs", "1", "--max-examples", "8", "--check-examples", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from smoothinf.training.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("reliability") / "run"
    train(TrainConfig(data="synthetic", epochs=1, lr=3e-3, device="cpu", out=str(out)))
    return out / "model.safetensors"


class Holder:
    """Another process holding the lock of an output until ``release``."""

    def __init__(self, output: Path, lock: Path | None = None):
        code = textwrap.dedent(
            f"""
            import sys
            from smoothinf.utils import output_lock
            with output_lock({str(output)!r}, lock={None if lock is None else str(lock)!r}):
                print("held", flush=True)
                sys.stdin.read()
            """
        )
        env = {k: v for k, v in os.environ.items() if k != "RANK"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


def _run(argv: list[str], capsys) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


@pytest.mark.parametrize("command", ["evaluate", "certify", "train"])
def test_a_second_writer_is_refused_naming_the_holders_pid(ckpt, tmp_path, capsys, command):
    """The issue's races: two evaluate / certify / train runs on one output at once."""
    if command == "evaluate":
        output = tmp_path / "r.jsonl"
        argv, held = ["evaluate", "-c", ckpt, *GRID, "--results", output], Holder(output)
    elif command == "certify":
        output = tmp_path / "cert.tsv"
        argv, held = ["certify", "-c", ckpt, *CERT, "--out", output, "--device", "cpu"], Holder(output)
    else:
        output = tmp_path / "run"
        argv = ["train", "--data", "synthetic", "--epochs", "1", "--out", output, "--device", "cpu"]
        held = Holder(output, output / "train.lock")
    try:
        code, err, _ = _run(argv, capsys)
    finally:
        held.release()
    assert code == 2 and len(err) == 1, err
    assert f"pid {held.proc.pid}" in err[0] and "another smoothinf process" in err[0]
    assert [p for p in tmp_path.rglob("*")] == []  # the refused run wrote nothing
    assert main([str(a) for a in argv]) == 0  # once the first writer is done, the second may run
    assert not lock_path(output).exists() and not (output / "train.lock").exists()


def test_a_lock_left_by_a_killed_process_blocks_nobody(tmp_path):
    output = tmp_path / "r.jsonl"
    lock_path(output).write_text("999999999\n")  # its process is gone: no flock is held on it
    with output_lock(output, "--results") as held:
        assert held.read_text().strip() == str(os.getpid())
        second = output_lock(output, "--results")  # another open file: flock refuses it too
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            second.__enter__()
    assert not lock_path(output).exists()
    with output_lock(tmp_path / "new" / "deeper" / "r.jsonl"):  # folders made for the lock only
        pass
    assert not (tmp_path / "new").exists()


def test_rows_met_twice_are_refused(ckpt, tmp_path, capsys):
    """A results file appended twice ("runs 4" for 2) and a certify table with an index twice."""
    results = tmp_path / "r.jsonl"
    assert main(["evaluate", "-c", str(ckpt), *GRID, "--results", str(results)]) == 0
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text(results.read_text() * 2)
    code, err, _ = _run(["report", doubled, "--out", tmp_path / "rep"], capsys)
    assert code == 2 and len(err) == 1 and "doubled.jsonl:3: repeats the row of line 1" in err[0]
    code, err, _ = _run(["evaluate", "-c", ckpt, *GRID, "--runs", "2", "--results", doubled], capsys)
    assert code == 2 and "repeats the row" in err[0]
    table = tmp_path / "cert.tsv"
    argv = ["certify", "-c", ckpt, *CERT, "--device", "cpu", "--out", table]
    assert _run(argv, capsys)[0] == 0
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines + lines[1:2]))  # example 0 written a second time
    code, err, _ = _run(argv, capsys)
    assert code == 2 and len(err) == 1 and "example 0 again" in err[0]


def test_a_torn_last_line_is_dropped_with_a_note_only_after_records(ckpt, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    assert main(["evaluate", "-c", str(ckpt), *GRID, "--results", str(results)]) == 0
    text = results.read_text()
    results.write_text(text[:-30])
    code, err, _ = _run(["evaluate", "-c", ckpt, *GRID, "--results", results], capsys)
    assert code == 0 and any("last line was cut" in line for line in err)
    assert results.read_text().count("\n") == text.count("\n")
    note = tmp_path / "note.txt"
    note.write_text("one line of a note, no final newline")
    code, err, _ = _run(["evaluate", "-c", ckpt, *GRID, "--results", note], capsys)
    assert code == 2 and len(err) == 1 and "not a smoothinf results file" in err[0]
    assert note.read_text() == "one line of a note, no final newline"


def test_readers_stop_at_the_line_size_limit(tmp_path, monkeypatch):
    """``--results /dev/full`` read 10 GB into memory: lines are read one at a time, each capped."""
    from smoothinf.evaluation import results

    monkeypatch.setattr(results, "MAX_LINE_BYTES", 1000)
    endless = tmp_path / "endless.jsonl"
    endless.write_bytes(b"\0" * 5000)
    for read in (results.read_results, results.read_jsonl):
        with pytest.raises(ConfigError, match="endless.jsonl:1: a line longer than"):
            read(endless)
    with pytest.raises(ConfigError, match=r"bin.jsonl:2: not UTF-8"):
        (tmp_path / "bin.jsonl").write_bytes(b'{"a": 1}\n\xff\xfe\n')
        results.read_jsonl(tmp_path / "bin.jsonl")


def test_certify_to_dev_full_leaves_nothing_behind(ckpt, capsys):
    side = Path("/dev/full.json")
    existed = side.exists()
    try:
        code, err, _ = _run(["certify", "-c", ckpt, *CERT, "--out", "/dev/full", "--device", "cpu"], capsys)
        assert code == 2 and len(err) == 1 and "not a regular file" in err[0]
        assert side.exists() == existed
    finally:
        if side.exists() and not existed:
            side.unlink()


def test_certify_on_a_full_disk_leaves_no_sidecar(ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cert.tsv"
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.suffix == ".tsv":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    code, err, _ = _run(["certify", "-c", ckpt, *CERT, "--out", out, "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1
    assert str(out) in err[0] and "disk is full" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_attack_prints_its_numbers_before_a_failed_save(ckpt, tmp_path, capsys, monkeypatch):
    """The attack ran to the end, then crashed writing --save-adv and never printed its accuracy."""

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    adv = tmp_path / "adv.safetensors"
    argv = ["attack", "--checkpoint", ckpt, "--attack", "fgsm", "--max-examples", "4", "--device", "cpu"]
    code, err, out = _run([*argv, "--save-adv", adv], capsys)
    assert "robust accuracy:" in out
    assert code == 2 and len(err) == 1 and "adv.safetensors" in err[0] and "disk is full" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_os_errors_are_one_line_naming_the_path(capsys, monkeypatch):
    import smoothinf.cli.data as data_cli

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/locked")

    monkeypatch.setattr(data_cli, "run_list", denied)
    code, err, _ = _run(["data", "list"], capsys)
    assert code == 2 and err == [
        "smoothinf data: error: /somewhere/locked: Permission denied; choose a writable location or fix"
        " its permissions"
    ]


@pytest.mark.parametrize("command", ["evaluate", "certify", "train", "report", "attack"])
def test_an_unwritable_folder_is_refused_before_the_work(ckpt, tmp_path, capsys, command, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    # root writes through any permission: the check asks os.access, so deny it there for root too
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode, **kw: (
            False if str(path).startswith(str(locked)) else real_access(path, mode, **kw)
        ),
    )
    results = tmp_path / "r.jsonl"
    if command == "report":
        assert main(["evaluate", "-c", str(ckpt), *GRID, "--results", str(results)]) == 0
    locked.chmod(0o500)
    argv = {
        "evaluate": ["evaluate", "-c", ckpt, *GRID, "--results", locked / "r.jsonl"],
        "certify": ["certify", "-c", ckpt, *CERT, "--out", locked / "c.tsv"],
        "train": ["train", "--data", "synthetic", "--out", locked / "run"],
        "report": ["report", results, "--out", locked / "rep"],
        "attack": [
            "attack",
            "--checkpoint",
            ckpt,
            "--attack",
            "fgsm",
            "--save-adv",
            locked / "a.safetensors",
        ],
    }[command]
    try:
        code, err, _ = _run(argv, capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2 and len(err) == 1 and "not writable" in err[0]


def test_a_slice_past_the_end_says_how_many_examples_it_evaluates(ckpt, capsys):
    code, err, out = _run(["evaluate", "-c", ckpt, "--first-example", "998", "--max-examples", "5"], capsys)
    assert code == 0 and "on 2 examples" in out
    assert len(err) == 1 and err[0].startswith("note: --max-examples 5 from example 998") and "2" in err[0]


def test_train_resume_with_other_threads_gives_a_notice(ckpt, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    threads = torch.get_num_threads()
    try:
        state = torch.load(run / "last.pt", weights_only=True)
        argv = ["train", "--data", "synthetic", "--epochs", "2", "--lr", "3e-3", "--device", "cpu"]
        code, err, _ = _run([*argv, "--out", run, "--resume", "--threads", state["threads"] + 1], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert any(line.startswith("note: --resume") and f"--threads {state['threads']}" in line for line in err)
    event = json.loads((run / "resume.jsonl").read_text().splitlines()[-1])
    assert event["changes"]["threads"] == [state["threads"], state["threads"] + 1]
