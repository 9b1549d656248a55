"""bf16 checkpoints keep the exact fp32 master weights and write the bf16 weights as their
correct casts (the GPT-580M run lost weeks to a checkpoint that did not): DP 2, DeepSpeed's bf16
optimizer (BLOOM's "ZeRO-0" bf16) and ZeRO-2, a few steps, save, load into a fresh engine,
compare."""
import pytest

from distributed import run_on_ranks


def _save_and_reload(rank, world_size, config, optimizer, directory):
    import glob

    import torch

    from megatron.config.cli import parse_config
    from megatron.data.batch import Batch
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel
    from megatron.trainer.deepspeed_engine import DeepSpeedTrainEngine

    mbs, T, V = 2, 16, 128
    cfg = parse_config(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                        "--seq-length", str(T), "--micro-batch-size", str(mbs),
                        "--global-batch-size", str(mbs * world_size), "--train-iters", "10",
                        "--lr", "1e-3", "--bf16", "--deepspeed_config", config,
                        "--bf16-optimizer", optimizer,
                        "--hidden-dropout", "0", "--attention-dropout", "0", "--mock-data"])
    cfg = cfg.replace(model={"vocab_size": V})
    layout = initialize_parallel(cfg.parallel)

    def engine(seed):
        torch.manual_seed(seed)
        model = GPTModel(cfg.model)  # DeepSpeed casts it to bf16, as in pretrain_gpt.py
        return DeepSpeedTrainEngine(model, cfg, layout, mbs * world_size)

    def batch(seed):
        tokens = torch.randint(0, V, (mbs, T), generator=torch.Generator().manual_seed(seed))
        return Batch(tokens, torch.roll(tokens, -1, 1), torch.ones(mbs, T),
                     torch.arange(T).expand(mbs, T))

    def states(e):
        from megatron.trainer.universal import full_states, link_optimizer_states
        link_optimizer_states(e.optimizer)
        full = {n: full_states(p, e.optimizer) for n, p in e.model.named_parameters()}
        return {n: (p.detach().clone(), full[n]["fp32"].clone(), full[n]["exp_avg"].clone())
                for n, p in e.model.named_parameters()}

    a = engine(0)
    for step in range(3):
        a.train_step([batch(10 * step + rank)], mbs * world_size)
    saved = states(a)
    a.save(directory, "step3", {"iteration": 3})
    torch.distributed.barrier()
    b = engine(1)  # other initial weights: everything must come from the checkpoint
    b.load(directory, "step3")
    loaded = states(b)
    file = glob.glob(f"{directory}/step3/mp_rank_00_model_states.pt")[0]
    on_disk = torch.load(file, map_location="cpu", weights_only=False)["module"]
    report = {}
    for n, (lp, master, m) in saved.items():
        lp2, master2, m2 = loaded[n]
        report[n] = dict(
            master_has_more_bits=not torch.equal(master, master.bfloat16().float()),
            lp_is_cast=torch.equal(lp, master.bfloat16()),
            disk_is_cast=on_disk[n].dtype == torch.bfloat16 and torch.equal(on_disk[n], lp),
            master_restored=torch.equal(master2, master), lp_restored=torch.equal(lp2, lp),
            moment_restored=torch.equal(m2, m))
    # and training continues identically from the reloaded engine
    la = a.train_step([batch(100 + rank)], mbs * world_size).loss
    lb = b.train_step([batch(100 + rank)], mbs * world_size).loss
    return report, la, lb


# zero0_bf16 (BLOOM's) runs DeepSpeed's BF16_Optimizer, zero2_bf16 its ZeRO-2 optimizer, and
# --bf16-optimizer local ours (fp32 masters and moments in the model-states file)
@pytest.mark.parametrize("config, optimizer", [("ds_configs/zero0_bf16.json", "deepspeed"),
                                               ("ds_configs/zero2_bf16.json", "deepspeed"),
                                               ("ds_configs/zero0_bf16.json", "local")])
def test_bf16_checkpoint_keeps_exact_fp32_masters_and_casts(config, optimizer, tmp_path):
    for report, la, lb in run_on_ranks(_save_and_reload, 2, (config, optimizer, str(tmp_path)),
                                       300):
        assert any(r["master_has_more_bits"] for r in report.values())  # masters are not bf16
        for name, r in report.items():
            assert r["lp_is_cast"] and r["disk_is_cast"], (name, r)
            assert r["master_restored"] and r["lp_restored"] and r["moment_restored"], (name, r)
        assert la == lb
