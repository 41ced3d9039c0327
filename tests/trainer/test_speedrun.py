"""The speedrun options: each architecture switch does what it says, Muon orthogonalises and resumes
bitwise, its sharded DDP update leaves every rank with the same parameters, and the final sequential
evaluation reads each val token once."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.trainer.helpers import FAST, records, step_losses
from trainer import contract
from trainer.batches import TokenStream, sequential_windows
from trainer.checkpoint import load_file, resolve
from trainer.config import ConfigError, load_config
from trainer.model import GPT, RMSNorm
from trainer.muon import Muon, Optimizers, configure_muon, newton_schulz5
from trainer.presets import GPTConfig
from trainer.schedule import Schedule, ScheduleState, wsd_factor
from trainer.shards import write_shard
from trainer.train import main

ALL_ON = dict(rotary=True, qk_norm=True, relu2=True, zero_init=True, rmsnorm=True, untied_head=True, logit_softcap=30.0,
              bias=False)


def tiny(**switches: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, **switches))  # type: ignore[arg-type]


# ---- the architecture switches ------------------------------------------------------------------


def test_defaults_are_gpt2_as_before() -> None:
    m = tiny()
    names = dict(m.named_parameters())
    assert "transformer.wpe.weight" in names and "lm_head.weight" not in names  # tied: listed once, as wte
    assert m.lm_head.weight is m.transformer.wte.weight
    assert isinstance(m.transformer.ln_f, torch.nn.LayerNorm) and not m.transformer.h[0].attn.rotary


def test_rotary_has_no_learned_positions_and_still_sees_order() -> None:
    m = tiny(rotary=True)
    assert "transformer.wpe.weight" not in dict(m.named_parameters())
    assert m.num_params() == m.num_params(non_embedding=False)
    x = torch.randint(0, 50, (1, 8))
    a = m.full_logits(x)
    b = m.full_logits(x.flip(1))
    # Position 0 sees one token either way; the last position sees the same bag of tokens in the
    # reverse order, which only position information can tell apart.
    assert not torch.allclose(a[0, -1], b[0, -1], atol=1e-5)


def test_untied_head_is_a_matrix_of_its_own() -> None:
    m = tiny(untied_head=True)
    names = dict(m.named_parameters())
    assert "lm_head.weight" in names and m.lm_head.weight is not m.transformer.wte.weight
    assert m.lm_head.weight.data_ptr() != m.transformer.wte.weight.data_ptr()


def test_zero_init_projections_output_zero_at_init() -> None:
    m = tiny(zero_init=True, untied_head=True)
    x = torch.randn(2, 8, 32)
    for block in m.transformer.h:
        assert torch.count_nonzero(block.attn(x)) == 0 and torch.count_nonzero(block.mlp(x)) == 0
    idx = torch.randint(0, 50, (2, 8))
    _, loss = m(idx, idx)
    assert loss is not None and loss.item() == pytest.approx(math.log(50), abs=1e-5)  # a zero head: uniform
    assert torch.count_nonzero(tiny().transformer.h[0].mlp.c_proj.weight) > 0  # off: GPT-2's init


def test_softcap_bounds_the_logits() -> None:
    m = tiny(logit_softcap=5.0, untied_head=True)
    with torch.no_grad():
        m.lm_head.weight.mul_(1000)
    logits = m.full_logits(torch.randint(0, 50, (2, 8)))
    assert logits.abs().max() <= 5.0 and logits.abs().max() > 4.9
    uncapped = tiny(untied_head=True)
    with torch.no_grad():
        uncapped.lm_head.weight.mul_(1000)
    assert uncapped.full_logits(torch.randint(0, 50, (2, 8))).abs().max() > 5.0


def test_relu2_mlp_is_relu_squared() -> None:
    mlp = tiny(relu2=True).transformer.h[0].mlp
    x = torch.randn(3, 32)
    want = mlp.c_proj(torch.relu(mlp.c_fc(x)) ** 2)
    assert torch.allclose(mlp(x), want, atol=1e-6)
    gelu = tiny().transformer.h[0].mlp
    assert not torch.allclose(gelu(x), gelu.c_proj(torch.relu(gelu.c_fc(x)) ** 2), atol=1e-4)


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k() -> None:
    x = torch.randn(2, 8, 32)
    for on in (True, False):
        attn = tiny(qk_norm=on).transformer.h[0].attn
        before = attn(x)
        with torch.no_grad():
            attn.c_attn.weight[:64].mul_(7.0)  # q and k rows
        assert torch.allclose(attn(x), before, atol=1e-5) is on


def test_rmsnorm_is_parameter_free_and_unit_rms() -> None:
    m = tiny(rmsnorm=True, bias=False)
    assert isinstance(m.transformer.ln_f, RMSNorm)
    assert not [n for n in dict(m.named_parameters()) if ".ln_" in n or "ln_f" in n]
    y = m.transformer.h[0].ln_1(3 * torch.randn(4, 32) + 1)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(4), atol=1e-4)


def test_no_biases() -> None:
    m = tiny(**ALL_ON)
    assert all(p.dim() == 2 for p in m.parameters())  # no biases, no gains: matrices only


def test_config_switches_reach_the_model_and_bad_values_are_refused() -> None:
    cfg = load_config(["--rotary", "--logit-softcap", "30", "--optimizer", "muon"])
    mc = cfg.model_config(vocab_size=50)
    assert mc.rotary and mc.logit_softcap == 30.0 and not mc.qk_norm
    for argv, words in ((["--optimizer", "sgd"], "optimizer must be one of adamw, muon"),
                        (["--logit-softcap", "-1"], "logit_softcap"),
                        (["--lr-decay-shape", "cubic"], "lr_decay_shape")):
        with pytest.raises(ConfigError, match=words):
            load_config(argv)


def test_linear_warmdown_reaches_zero_at_the_deadline_stop() -> None:
    assert wsd_factor(0.5, 0.3, "linear") == 1.0
    assert wsd_factor(0.85, 0.3, "linear") == pytest.approx(0.5)
    assert wsd_factor(1.0, 0.3, "linear") == 0.0
    # The recipe's form (constant, then linear to 0 over the last 28.6 %), by training time when the
    # launch has a deadline: the same projection of the deadline stop as the auto schedule's.
    flags = ["--lr-schedule", "wsd", "--lr-decay-shape", "linear", "--lr-decay-frac", "0.286", "--min-lr", "0",
             "--warmup-iters", "0", "--lr", "0.002", "--max-iters", "100000", "--deadline-epoch", "1e10"]
    sched = Schedule.from_config(load_config(flags))
    assert sched.by_time and sched.decay_shape == "linear" and "decay (linear)" in sched.describe()
    state = ScheduleState(train_s=85.7, step_s=1.0, total_s=101.0)  # this step ends at 86.7 of 101 s
    assert sched.lr_at(10, state) == pytest.approx(0.002 * (1 - (86.7 / 101 - 0.714) / 0.286))
    assert sched.lr_at(10, ScheduleState(train_s=100.0, step_s=1.0, total_s=101.0)) == 0.0


# ---- Muon ---------------------------------------------------------------------------------------


def test_newton_schulz_leaves_singular_values_near_one() -> None:
    torch.manual_seed(0)
    for shape in ((32, 96), (96, 32), (3, 24, 64)):
        s = torch.linalg.svdvals(newton_schulz5(torch.randn(*shape)))
        # The records' quintic coefficients: not exactly 1, but every value in about [0.7, 1.2].
        assert s.min() > 0.6 and s.max() < 1.25, (shape, s.min(), s.max())


def test_muon_step_is_an_orthogonalised_momentum_update() -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(32, 96))
    opt = Muon([p], lr=1.0, momentum=0.95)
    p.grad = torch.randn(32, 96)
    opt.step()
    s = torch.linalg.svdvals(-p.detach())
    assert s.min() > 0.6 and s.max() < 1.25
    assert torch.equal(opt.state[p]["momentum_buffer"], p.grad)  # first step: buf = g
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest() -> None:
    m = tiny(**ALL_ON)
    opt = configure_muon(m, lr=0.008, embed_lr=0.3, muon_lr=0.02, momentum=0.95, weight_decay=0.0,
                         betas=(0.9, 0.95), fused=False)
    assert isinstance(opt, Optimizers)
    muon = {id(p) for g in opt.named["muon"].param_groups for p in g["params"]}
    adam = {id(p) for g in opt.named["adamw"].param_groups for p in g["params"]}
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[i] for i in adam} == {"transformer.wte.weight", "lm_head.weight"}
    assert all(names[i].startswith("transformer.h.") for i in muon) and len(muon) == 4 * 2
    (group,) = opt.named["muon"].param_groups
    assert group["blocks"].count(3) == 2  # each layer's stacked q/k/v
    scales = sorted(g["lr_scale"] for g in opt.param_groups)
    assert scales == pytest.approx([1.0, 0.02 / 0.008, 0.3 / 0.008])
    # Tied, wte is the head too: it takes the head's LR, not the embedding's 0.3.
    gpt2 = tiny()
    tied = configure_muon(gpt2, 0.008, 0.3, 0.02, 0.95, 0.0, (0.9, 0.95), fused=False)
    (embed,) = [g for g in tied.param_groups if any(p is gpt2.transformer.wte.weight for p in g["params"])]
    assert embed["lr_scale"] == 1.0


SPEEDRUN_FLAGS = ["--rotary", "--qk-norm", "--relu2", "--zero-init", "--rmsnorm", "--untied-head", "--logit-softcap", "30",
                  "--bias", "false", "--optimizer", "muon", "--lr", "0.008", "--embed-lr", "0.3", "--muon-lr", "0.02",
                  "--grad-clip", "0", "--lr-schedule", "cosine", "--lr-decay-iters", "20", "--log-interval", "1",
                  "--threads", "1"]


def test_muon_state_survives_resume_bitwise(tmp_path: Path) -> None:
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main([*FAST, *SPEEDRUN_FLAGS, "--out-dir", str(straight), "--max-iters", "12"]) == 0
    assert main([*FAST, *SPEEDRUN_FLAGS, "--out-dir", str(halves), "--max-iters", "6"]) == 0
    saved = load_file(resolve(halves))
    assert set(saved["optimizer"]) == {"adamw", "muon"} and saved["optimizer"]["muon"]["state"]
    assert main([*FAST, *SPEEDRUN_FLAGS, "--out-dir", str(halves), "--max-iters", "12"]) == 0
    assert "resumed: checkpoints/ckpt-000006.pt" in (halves / "train.log").read_text()
    assert step_losses(halves) == step_losses(straight)  # bitwise, step by step
    a, b = load_file(resolve(straight)), load_file(resolve(halves))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    buffers = [s["momentum_buffer"] for s in a["optimizer"]["muon"]["state"].values()]
    again = [s["momentum_buffer"] for s in b["optimizer"]["muon"]["state"].values()]
    assert len(buffers) == 8 and all(torch.equal(x, y) for x, y in zip(buffers, again, strict=True))
    # An AdamW checkpoint is no Muon run's to resume (and the other way round).
    assert main([*FAST, "--out-dir", str(halves), "--max-iters", "14"]) == 2


def _muon_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    m = tiny(**ALL_ON)
    opt = configure_muon(m, 0.008, 0.3, 0.02, 0.95, 0.0, (0.9, 0.95), fused=False)
    for step in range(3):
        torch.manual_seed(100 + step)  # the same gradients on every rank: DDP's all-reduce in miniature
        x = torch.randint(0, 50, (2, 8))
        _, loss = m(x, x)
        assert loss is not None
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.save({k: v.detach().clone() for k, v in m.state_dict().items()}, f"{out}/rank{rank}-of-{world}.pt")
    if world > 1:
        dist.destroy_process_group()


def test_sharded_muon_leaves_every_rank_with_the_same_parameters(tmp_path: Path) -> None:
    from trainer.launch import free_port

    _muon_rank(0, 1, 0, str(tmp_path))  # one process does every matrix itself
    # fork: the children need not import torch and this module again (seconds on a busy machine)
    mp.start_processes(_muon_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    single = torch.load(tmp_path / "rank0-of-1.pt")
    r0, r1 = torch.load(tmp_path / "rank0-of-2.pt"), torch.load(tmp_path / "rank1-of-2.pt")
    for k in single:
        assert torch.equal(r0[k], r1[k]), k  # each slice came from one rank, the rest were exact zeros
        assert torch.allclose(r0[k], single[k], atol=1e-6), k


# ---- the final sequential evaluation ------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sequential_windows_read_each_token_once(world: int) -> None:
    tokens, seq = 1000, 64
    windows = [w for r in range(world) for w in sequential_windows(tokens, seq, r, world)]
    covered = sorted(i for start, n in windows for i in range(start, start + n))
    assert covered == list(range(tokens))  # every position once: no gap, no overlap
    assert sum(n for _, n in windows) == tokens
    assert sorted(windows)[-1] == (960, 40)  # the last window is the rest


def test_token_stream_reads_across_shards_in_order(tmp_path: Path) -> None:
    import numpy as np

    write_shard(tmp_path / "x_val_000000.bin", np.arange(0, 100, dtype=np.uint16))
    write_shard(tmp_path / "x_val_000001.bin", np.arange(100, 150, dtype=np.uint16))
    stream = TokenStream([tmp_path / "x_val_000000.bin", tmp_path / "x_val_000001.bin"])
    assert len(stream) == 150 and stream.read(95, 10).tolist() == list(range(95, 105))
    batches = list(stream.batches(sequential_windows(120, 50, 0, 1), batch_size=4))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 50), (1, 20)]
    x, y = batches[0]
    assert x[1, 0].item() == 50 and y[1, -1].item() == 100  # the target crosses into the next shard


def test_final_val_is_the_loss_over_the_first_tokens_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([*FAST, "--out-dir", str(out), "--max-iters", "3", "--final-val-tokens", "500"]) == 0
    (rec,) = records(out, contract.RECORD_FINAL_VAL)
    assert set(rec) == {*contract.FINAL_VAL_FIELDS, contract.TYPE, contract.TIME}
    assert rec["step"] == 3 and rec["tokens"] == 500 and rec["split"] == "val"
    # The same figure from the checkpoint, by hand: predictions of tokens 1..500 of the val shard.
    ckpt = load_file(resolve(out))
    model = GPT(GPTConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    stream = TokenStream(sorted((out / "data").glob("*val*.bin")))
    ids = torch.from_numpy(stream.read(0, 501))
    total = 0.0
    with torch.no_grad():
        for start in range(0, 500, 32):
            n = min(32, 500 - start)
            _, loss = model(ids[start : start + n][None], ids[start + 1 : start + n + 1][None])
            assert loss is not None
            total += loss.item() * n
    assert rec["val_loss"] == pytest.approx(total / 500, rel=1e-5)


def test_final_val_longer_than_the_val_data_is_refused(tmp_path: Path) -> None:
    assert main([*FAST, "--out-dir", str(tmp_path / "out"), "--max-iters", "3", "--final-val-tokens", "100000000"]) == 2


# ---- the recipe ---------------------------------------------------------------------------------


def test_the_speedrun_recipe_is_its_config_file_and_names_its_quality() -> None:
    from trainer import recipes
    from trainer.config import load_file

    r = recipes.get("gpt2-speedrun")
    on_disk = load_file(Path(__file__).resolve().parents[2] / "trainer" / "configs" / "speedrun.yaml")
    assert {k: v for k, v in on_disk.items() if k not in ("out_dir", "data_dir", "device", "dtype")} == r.config
    assert r.data.source == "fineweb10B" and r.tokens_per_step == 524_288
    assert r.quality is not None and r.quality.split == contract.FINEWEB_VAL and r.quality.val_loss == 3.28
    assert r.quality.tokens == r.max_iters * r.tokens_per_step == 2_400_190_464
    assert r.data.max_tokens is not None and r.data.max_tokens >= r.quality.tokens
    assert r.config["final_val_tokens"] == contract.FINEWEB_VAL_TOKENS
    mc = load_config(["--config", str(Path(__file__).resolve().parents[2] / "trainer/configs/speedrun.yaml")]).model_config(50304)
    assert all((mc.rotary, mc.qk_norm, mc.relu2, mc.zero_init, mc.rmsnorm, mc.untied_head)) and not mc.bias
