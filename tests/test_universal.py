"""ray_jobs.resume.to_universal without Ray: DeepSpeed ZeRO-1 and ZeRO-2 engines on real gloo process
groups (torch.multiprocessing), saved by 2 ranks, converted, loaded by 1 or 3. The continued run takes the
same steps as the uninterrupted one, to float rounding (same global batch, same masks). ZeRO-3 goes through
the whole job in test_resume_any_size.py, and the elastic run (tests/test_elastic.py) resumes ZeRO-2
checkpoints 2 -> 1 -> 2 -> 1 workers through the job."""

import os
from pathlib import Path

import pytest
import torch

from ray_jobs.ray_env import free_port

pytestmark = pytest.mark.slow

GLOBAL_BATCH, SIZE = 12, 8


def _worker(rank: int, world: int, port: int, stage: int, folder: str, load: bool, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    import torch.distributed as dist

    from onade.config import load_config
    from onade.loss import nade_loss
    from onade.masks import draw_observed
    from onade.model import build_model
    from onade.export_format import DS_TAG
    from ray_jobs.engine import build_engine, deepspeed_config, load_zero_json, split_batch

    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = load_config("debug", None, [f"model.image_size={SIZE}", f"train.zero_stage={stage}", "train.steps=20"])
    torch.manual_seed(0)
    ds = deepspeed_config(load_zero_json(stage), split_batch(GLOBAL_BATCH, world), 1.0, "fp32")
    if load:
        ds["checkpoint"] = {"load_universal": True}
    engine = build_engine(build_model(cfg), cfg, ds)
    if load:
        engine.load_checkpoint(str(Path(folder, "universal")), tag=DS_TAG)
    data = torch.randint(0, 256, (GLOBAL_BATCH, SIZE, SIZE, 3), generator=torch.Generator().manual_seed(5),
                         dtype=torch.uint8)
    tokens, lengths = torch.zeros(GLOBAL_BATCH, 4, dtype=torch.long), torch.ones(GLOBAL_BATCH, dtype=torch.long)
    mine = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)

    def step(i: int) -> float:
        observed, _ = draw_observed(cfg.masks, GLOBAL_BATCH, SIZE, torch.Generator().manual_seed(100 + i))
        loss = nade_loss(engine(data[mine], observed[mine], tokens[mine], lengths[mine]), data[mine], observed[mine])
        engine.backward(loss)
        engine.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        return float(total) / world

    start = engine.global_steps
    if not load:
        for i in range(5):
            step(i)
        engine.save_checkpoint(str(Path(folder, "saved")), tag=DS_TAG)
    losses = [step(i) for i in range(5, 8)]
    if rank == 0:
        out.put({"start": start, "losses": losses, "lr": engine.get_lr()[0]})
    dist.barrier()
    dist.destroy_process_group()


def _run(world: int, stage: int, folder: Path, load: bool) -> dict:
    import torch.multiprocessing as mp

    out = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(world, free_port(), stage, str(folder), load, out), nprocs=world,
                       start_method="spawn", join=True)
    return out.get()


@pytest.fixture(scope="module")
def saved_by_two_ranks(tmp_path_factory):
    """stage -> (folder, losses): 2 ranks take 5 steps, save (converted to universal) and take 3 more steps.
    Made once per stage."""
    from ray_jobs.resume import to_universal

    made: dict[int, tuple[Path, dict]] = {}

    def get(stage: int) -> tuple[Path, dict]:
        if stage not in made:
            folder = tmp_path_factory.mktemp(f"zero{stage}")
            uninterrupted = _run(2, stage, folder, load=False)
            stored = sorted(p.name for p in (folder / "saved" / "deepspeed").iterdir())
            to_universal(folder / "saved", folder / "universal")
            assert sorted(p.name for p in (folder / "saved" / "deepspeed").iterdir()) == stored  # left as it was
            made[stage] = folder, uninterrupted
        return made[stage]

    return get


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stage, ranks", [(1, 1), (2, 1), (2, 3)], ids=["zero1-2to1", "zero2-2to1", "zero2-2to3"])
def test_two_ranks_resume_on_another_rank_count_exactly_where_they_stopped(saved_by_two_ranks, stage, ranks):
    folder, uninterrupted = saved_by_two_ranks(stage)
    resumed = _run(ranks, stage, folder, load=True)
    assert resumed["start"] == 5
    # Weights and Adam's moments came back: a fresh optimizer or model would take other steps.
    assert resumed["losses"] == pytest.approx(uninterrupted["losses"], abs=1e-4)
    assert resumed["lr"] == pytest.approx(uninterrupted["lr"], rel=1e-9)
