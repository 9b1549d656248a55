from megatron.parallel.launch import first_slurm_host, resolve_launch_env


def test_torchrun_env():
    le = resolve_launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                             "MASTER_ADDR": "node1", "MASTER_PORT": "1234"})
    assert (le.rank, le.world_size, le.local_rank, le.master_addr, le.master_port) == \
        (3, 8, 1, "node1", 1234)
    assert le.launcher == "torchrun"


def test_slurm_env_one_task_per_gpu():
    le = resolve_launch_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5",
                             "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_JOB_ID": "42"})
    assert (le.rank, le.world_size, le.local_rank) == (5, 16, 5)
    assert le.master_addr == "gpu007" and le.launcher == "slurm"
    assert le.master_port == 6042


def test_single_process_default():
    le = resolve_launch_env({})
    assert (le.rank, le.world_size, le.launcher) == (0, 1, "single") and le.master_port > 0


def test_slurm_nodelist_parsing_without_scontrol():
    assert first_slurm_host("node[3-5,9],login1") in ("node3",)
    assert first_slurm_host("a1,b2") == "a1"
