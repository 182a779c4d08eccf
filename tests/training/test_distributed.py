"""Data-parallel training through torchrun (2 CPU processes, gloo) on the tiny config, resuming
across world sizes, the helpers at world size 1, and the time-to-solution report."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from training import config, datasets, distributed, time_to_solution, train

pytestmark = pytest.mark.training

TINY = config.REPO_ROOT / "training/configs/tiny.yaml"
TTS = config.REPO_ROOT / "training/configs/time_to_solution.yaml"

#: Trains through train.run with a ``build`` hook that keeps the network, then prints a hash of
#: its parameters: the only way to see what a rank other than 0 holds (it writes nothing).
WORKER = """
import hashlib, os, sys
from training import config, distributed, train

built = []


def build(cfg):
    built.append(train.build_model(cfg))
    return built[-1]


cfg = config.load(sys.argv[1], train.parse_overrides(sys.argv[3:]))
train.run(cfg, sys.argv[2], progress=False, build=build)
data = b"".join(p.detach().numpy().tobytes() for p in built[0].parameters())
rank = distributed.env_world()[0]
sys.stdout.flush()
# One write() of less than PIPE_BUF bytes: atomic, so the two ranks' lines cannot interleave
# (print() wrote the text and the newline separately, and CI once saw them merged).
os.write(1, f"rank {rank} parameters {hashlib.sha256(data).hexdigest()}\\n".encode())
"""


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(config.REPO_ROOT)}
    out = subprocess.run(
        cmd, cwd=config.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def parameters_sha(checkpoint) -> str:
    model, _ = train.load_checkpoint(checkpoint)
    data = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def overrides(data_root, tmp_path_factory) -> list[str]:
    tmp = tmp_path_factory.mktemp("ddp")
    return [
        f"data.teacher_dir={data_root / 'teacher'}",
        f"data.split_dir={tmp / 'splits'}",
        f"train.runs_dir={tmp / 'runs'}",
        "train.batch_size=2",  # the global batch: one crop per rank
    ]


def tiny(overrides: list[str], epochs: int) -> config.Config:
    return config.load(TINY, train.parse_overrides([*overrides, f"train.epochs={epochs}"]))


@pytest.fixture(scope="module")
def two_processes(overrides, data_root):
    """A fresh run of one epoch on two processes, through the real command line, with a
    DataLoader worker per rank as the real configs have (started from a fork server)."""
    args = ["-m", "training.train", "--config", str(TINY), "--data-root", str(data_root)]
    out = torchrun([*args, "--set", *overrides, "train.epochs=1", "data.num_workers=1"])
    return tiny(overrides, 1).run_dir, out


@pytest.fixture(scope="module")
def resumed_alone(two_processes, overrides, data_root):
    """The two-process run resumed for a second epoch in one process (in-process)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_dir = train.run(tiny(overrides, 2), data_root, progress=False)
    return run_dir, printed.getvalue()


@pytest.fixture(scope="module")
def resumed_on_two(resumed_alone, overrides, data_root, tmp_path_factory):
    """The one-process run resumed for a third epoch on two processes (each reports its
    parameters)."""
    script = tmp_path_factory.mktemp("worker") / "worker.py"
    script.write_text(WORKER)
    out = torchrun([str(script), str(TINY), str(data_root), *overrides, "train.epochs=3"])
    return resumed_alone[0], out


# ----------------------------------------------------------------------------- one process


def test_without_torchrun_the_world_is_one_process_and_the_helpers_do_nothing():
    world = distributed.init("cpu")
    assert (world.rank, world.size, world.is_main, world.distributed) == (0, 1, True, False)
    obj = {"best": 0.5}
    assert distributed.broadcast(obj, world) is obj
    assert distributed.all_reduce_mean(0.25, world) == 0.25
    distributed.barrier(world)
    distributed.teardown(world)
    assert not torch.distributed.is_initialized()
    assert distributed.threads_per_rank(2, world) == 2


def test_torchrun_environment_gives_rank_world_and_the_cores_each_rank_gets():
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert distributed.env_world(env) == (1, 2, 1, 2)
    assert distributed.env_world({}) == (0, 1, 0, 1)
    assert distributed.threads_per_rank(2, distributed.World(1, 2, 1, 2)) == 1
    assert distributed.threads_per_rank(2, distributed.World(3, 4, 3, 4)) == 1  # at least one
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.env_world({"WORLD_SIZE": "2", "RANK": "2"})


def test_global_batch_is_shared_out_evenly_or_refused():
    assert train.rank_batch_size(16, distributed.World(size=2)) == 8
    assert train.rank_batch_size(16, distributed.World()) == 16
    with pytest.raises(ValueError, match="not divisible by the world size 2"):
        train.rank_batch_size(3, distributed.World(size=2))


def test_single_process_crop_stream_keeps_its_seeding_and_ranks_draw_other_crops(data_root):
    cfg = config.load(TINY).data
    scenes = datasets.teacher_scenes(data_root / "s2_unlabelled", data_root / "teacher")

    def first(rank):
        return next(iter(datasets.CropStream(scenes, cfg, 0, 3, rank=rank)))[0].numpy()

    expected = datasets.CropSampler(scenes, cfg).sample(np.random.default_rng([0, 3, 0]))[0]
    assert np.array_equal(first(None), expected)  # [seed, epoch, worker], as always
    assert np.array_equal(first(1), first(1))
    assert not np.array_equal(first(0), first(1))


# ----------------------------------------------------------------------------- two processes


def test_two_processes_train_one_run_folder_written_by_rank_0(two_processes):
    run_dir, out = two_processes
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "DONE", "best.pt", "config.yaml", "data.json", "last.pt", "metrics.csv", "metrics.json",
    ]  # fmt: skip
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1] and rows[0]["wall_seconds"] >= rows[0]["seconds"]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2
    assert json.loads((run_dir / "DONE").read_text())["epochs"] == 1
    assert config.yaml.safe_load((run_dir / "config.yaml").read_text())["world_size"] == 2
    assert out.stdout.count("epoch 1:") == 1 and out.stdout.count("run folder:") == 1
    assert out.stderr.count("epoch 1/1:   0%") == 1  # one progress bar starts


def test_checkpoint_of_two_processes_holds_the_plain_network(two_processes):
    run_dir, _ = two_processes
    model, ckpt = train.load_checkpoint(run_dir / "last.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["state"]["epoch"] == 1 and model(torch.zeros(1, 4, 64, 64)).shape == (1, 1, 64, 64)


def test_a_run_of_two_processes_resumes_in_one(resumed_alone):
    run_dir, printed = resumed_alone
    assert "resumed" in printed and "after epoch 1" in printed
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["wall_seconds"] > rows[0]["wall_seconds"]  # the sessions add up


def test_a_run_of_one_process_resumes_in_two_with_the_same_weights_on_every_rank(resumed_on_two):
    run_dir, out = resumed_on_two
    assert out.stdout.count("resumed") == 1 and out.stdout.count("epoch 3:") == 1
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    hashes = dict(re.findall(r"rank (\d+) parameters ([0-9a-f]{64})", out.stdout))
    assert set(hashes) == {"0", "1"}
    assert hashes["0"] == hashes["1"] == parameters_sha(run_dir / "last.pt")


# ----------------------------------------------------------------------------- time to solution


def rows(ious: list[float], epoch_seconds: float = 60.0, wall: bool = True) -> list[dict]:
    out = []
    for i, iou in enumerate(ious, 1):
        row = {"epoch": i, "seconds": epoch_seconds, "val_iou": iou}
        if wall:
            row["wall_seconds"] = 5.0 + i * epoch_seconds
        out.append(row)
    return out


def test_time_to_target_is_the_first_epoch_reaching_it():
    hit = time_to_solution.time_to_target(rows([0.5, 0.76, 0.7, 0.8]), 0.75)
    assert hit == {"epoch": 2, "seconds": 125.0, "value": 0.76}
    assert time_to_solution.time_to_target(rows([0.5, 0.75]), 0.75)["epoch"] == 2  # at = reached
    assert time_to_solution.time_to_target(rows([0.5, 0.7]), 0.75) is None


def test_wall_time_falls_back_to_the_summed_epoch_seconds():
    assert time_to_solution.wall_seconds(rows([0.1, 0.2, 0.3], 10.0, wall=False)) == [10, 20, 30]


def test_indivisible_world_size_fails_before_anything_runs(tmp_path):
    cfg, exp = time_to_solution.load(TTS, {"train.runs_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="divisible"):
        time_to_solution.run(cfg, exp, tmp_path, nproc=[1, 3])
    assert not any(tmp_path.iterdir())


def test_report_writes_time_to_target_speed_up_and_figure(tmp_path):
    runs = tmp_path / "runs"
    for name, n, ious, seconds in (
        ("w1", 1, [0.6, 0.7, 0.78, 0.8], 100.0),
        ("w2", 2, [0.62, 0.76, 0.79, 0.8], 80.0),
        ("w4", 4, [0.5, 0.6, 0.65, 0.7], 90.0),
    ):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.json").write_text(json.dumps(rows(ious, seconds)))
        launch = {
            "nproc": n,
            "device": "cpu",
            "threads_per_process": max(1, 2 // n),
            "batch_per_process": 16 // n,
            "sessions": [{"seconds": 4 * seconds + 30, "returncode": 0}],
            "hardware": {"cpu": "2-core CPU (test)", "gpus": [], "torch": "9.9", "python": "3"},
        }
        (runs / name / "launch.json").write_text(json.dumps(launch))
    cfg, exp = time_to_solution.load(
        TTS,
        {
            "train.runs_dir": str(runs),
            "time_to_solution.page": str(tmp_path / "docs" / "tts.md"),
            "time_to_solution.figure": str(tmp_path / "docs" / "figures" / "tts.png"),
        },
    )
    out = time_to_solution.report(cfg, exp)
    assert out["runs"]["w1"]["time_to_target_s"] == 305.0  # epoch 3 of 100 s, 5 s set-up
    assert out["runs"]["w2"]["time_to_target_s"] == 165.0  # epoch 2 of 80 s
    assert out["runs"]["w2"]["speed_up_to_target"] == pytest.approx(305 / 165)
    assert out["runs"]["w4"]["time_to_target_s"] is None
    assert (tmp_path / "docs" / "figures" / "tts.png").stat().st_size > 0
    page = (tmp_path / "docs" / "tts.md").read_text()
    assert "| `w2` | 2 × 1 (cpu) | 8 | 4 | 2.8 | 2 | 1.85× |" in page
    assert "| `w4` | 4 × 1 (cpu) | 4 | 4 | not reached |" in page
    assert "`w4` never reached IoU 0.75" in page
    assert "](figures/tts.png)" in page
    assert "2-core CPU (test)" in page and "torch 9.9" in page and "global batch 16" in page
    assert "59 min on 32 V100" in page and "cannot be" in page
    # the further targets (0.80, 0.85 in the config): w1 reaches 0.8 at epoch 4 (405 s), w2 at
    # epoch 4 (325 s); nobody reaches 0.85
    assert "| 0.8 | 6.8 (4) | 5.4 (4) | not reached | w2: 1.25× |" in page
    assert "| 0.85 | not reached | not reached | not reached | – |" in page
