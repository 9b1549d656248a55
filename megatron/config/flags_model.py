"""Model, parallelism and data flags (Megatron-DeepSpeed / Megatron-LM names); megatron/config/cli.py
builds the parser from them."""


def add_model_flags(m) -> None:
    """Flags of ModelConfig."""
    m.add("--num-layers", type=int, default=2, help="Number of transformer layers.")
    m.add("--hidden-size", type=int, default=64, help="Transformer hidden size.")
    m.add("--ffn-hidden-size", type=int, default=None,
          help="MLP hidden size after the activation (default 4 x hidden, also with "
               "--glu-activation, whose first projection then has 2 x this many outputs, as in "
               "Megatron-DeepSpeed; with --swiglu, Megatron-LM's int(4 x hidden x 2/3 / 64) x "
               "64).")
    m.add("--num-attention-heads", type=int, default=4, help="Number of attention heads.")
    m.add("--seq-length", type=int, default=128, help="Sequence length of training samples.")
    m.add("--max-position-embeddings", type=int, default=None,
          help="Positions the model supports (default: --seq-length).")
    m.add("--make-vocab-size-divisible-by", type=int, default=128,
          help="Pad the vocabulary to a multiple of this x tensor-parallel size.")
    m.add("--pad-vocab-size-to", type=int, default=None,
          help="Pad the vocabulary to exactly this size (BLOOM: 250880).")
    m.add("--position-embedding-type", default="learned_absolute",
          choices=["learned_absolute", "absolute", "learned", "sinusoidal", "rope", "rotary",
                   "alibi", "none"],
          help="Position embedding: learned_absolute (alias absolute), sinusoidal, rope (alias "
               "rotary), alibi or none.")
    m.add("--rotary-percent", type=float, default=1.0,
          help="Fraction of each head's dimensions that get rotary embedding.")
    m.add("--rotary-base", type=float, default=10000.0, help="Base period of rotary embedding.")
    m.add("--openai-gelu", action="store_const", const="gelu_tanh", dest="activation",
          default="gelu", help="Use the tanh approximation of GeLU (GPT-2's).")
    m.add("--glu-activation", default=None, choices=["geglu", "swiglu", "reglu", "liglu"],
          help="Gated linear unit MLP activation (Megatron-DeepSpeed's flag): the first "
               "projection outputs 2 x --ffn-hidden-size (gate and up; default FFN size 4 x "
               "hidden, as without GLU).")
    m.add("--swiglu", action="store_true",
          help="Megatron-LM's flag: --glu-activation swiglu, and without --ffn-hidden-size the "
               "FFN size is Megatron-LM's int(4 x hidden x 2/3 / 64) x 64 (about the parameters "
               "of a 4 x hidden GeLU MLP) instead of 4 x hidden.")
    m.add("--normalization", default="LayerNorm", choices=["LayerNorm", "RMSNorm"],
          help="Normalisation layer (computed in fp32).")
    m.add("--layernorm-epsilon", type=float, default=1e-5, help="Epsilon of the norms.")
    m.add("--sandwich-layernorm", action="store_true",
          help="Also normalise each sub-layer's output before the residual add (sandwich-LN).")
    m.add("--embed-layernorm", action="store_true",
          help="LayerNorm after the word embedding (BLOOM's bf16 stabiliser).")
    m.add("--parallel-attention-mlp", action="store_true",
          help="Attention and MLP in parallel from one residual (GPT-J / GPT-NeoX).")
    m.add("--disable-bias-linear", action="store_false", dest="add_bias_linear",
          help="No biases in linear layers.")
    m.add("--untie-embeddings-and-output-weights", action="store_true",
          help="Separate output layer instead of reusing the input embedding.")
    m.add("--init-method-std", type=float, default=0.02, help="Std of the normal init.")
    m.add("--hidden-dropout", type=float, default=0.1, help="Dropout after attention and MLP.")
    m.add("--attention-dropout", type=float, default=0.1, help="Dropout on attention probs.")
    m.add("--attention-softmax-in-fp32", action="store_true",
          help="Compute attention softmax in fp32 under bf16/fp16.")
    m.add("--apply-query-key-layer-scaling", action="store_true",
          help="Scale query-key products by 1/layer-number (fp16 stability).")
    m.add("--attention-kernel", default="auto", choices=["auto", "eager", "sdpa", "flex", "fa4"],
          help="Attention implementation. auto: SDPA for plain causal masks (and on CPUs), "
               "FlexAttention for other masks and ALiBi on GPUs (SDPA with attention dropout). fa4 "
               "(only when asked for): "
               "FlashAttention-4 (pip install flash-attn-4==4.0.0b36; Hopper or newer GPUs) on "
               "the fused QKV, its backward writing the QKV gradient in place; plain causal "
               "masks, no ALiBi, --attention-dropout 0, bf16/fp16.")
    m.add("--sdpa-backend", default="auto", choices=["auto", "cudnn", "flash", "efficient", "math"],
          help="On GPUs, the torch SDPA kernel tried first where attention runs through SDPA "
               "(a kernel that cannot take the inputs falls through to the next); auto: "
               "torch's own order.")
    m.add("--mlp-kernel", default="torch", choices=["torch", "quack"],
          help="MLP kernels. quack (pip install quack-kernels==0.6.4; Hopper or newer GPUs): "
               "fc1's GEMM applies the activation and fc2's backward GEMM its derivative in "
               "their epilogues, so neither runs as a kernel of its own (1.3B preset on one "
               "H100: +2.9%% tokens/s, 6 GiB less; docs/benchmarks.md); gelu and --openai-gelu "
               "MLPs at TP 1 in bf16/fp16.")
    m.add("--prefix-lm", action="store_true",
          help="Prefix-LM: each sample is split at a random point (drawn from its tokens and "
               "--seed, the same on every rank and layout); positions before it attend "
               "bidirectionally. Combines with --reset-attention-mask.")


def add_parallel_flags(par) -> None:
    """Flags of ParallelConfig."""
    par.add("--tensor-model-parallel-size", type=int, default=1, help="Tensor-parallel size.")
    par.add("--pipeline-model-parallel-size", type=int, default=1, help="Pipeline stages.")
    par.add("--sequence-parallel", action="store_true",
            help="Shard norms/dropout activations along the sequence over TP ranks.")
    par.add("--pp-partition-method", default="type:transformer",
            help="How layers are split over pipeline stages: type:transformer (the default; "
                 "needs --num-layers divisible by the stages), 'type:transformer|embedding' "
                 "(the embedding and head count as layers: BLOOM-176B's 70 layers on 12 "
                 "stages), parameters, uniform or type:REGEX.")
    par.add("--distributed-backend", default="auto", choices=["auto", "nccl", "gloo"],
            help="torch.distributed backend (auto: nccl on GPUs, gloo on CPU).")
    par.add("--distributed-timeout-minutes", type=int, default=30,
            help="Timeout of collective operations.")
    par.add("--sync-tp-duplicated-parameters", action="store_true",
            help="Average the parameters every TP rank holds a copy of (norms, row-parallel "
                 "biases, position embeddings) across the TP group before each forward, so bf16 "
                 "rounding cannot make the copies drift apart (BLOOM-176B).")


def add_data_flags(d) -> None:
    """Flags of DataConfig."""
    d.add("--data-path", nargs="*", default=[],
          help="Dataset prefixes, optionally weighted: [w1] prefix1 [w2] prefix2 ...")
    d.add("--split", default="969,30,1", help="Train/valid/test split weights, e.g. 949,50,1.")
    d.add("--tokenizer-type", default=None,
          help="SentencePieceTokenizer, GPTSentencePieceTokenizer, HuggingFaceTokenizer, "
               "GPT2BPETokenizer, ByteLevelTokenizer or NullTokenizer (with --vocab-size).")
    d.add("--tokenizer-model", default=None, help="SentencePiece model file.")
    d.add("--tokenizer-name-or-path", default=None,
          help="Local HF tokenizer.json or directory.")
    d.add("--vocab-file", default=None, help="GPT-2 BPE vocab.json.")
    d.add("--merge-file", default=None, help="GPT-2 BPE merges.txt.")
    d.add("--vocab-size", type=int, default=None,
          help="NullTokenizer: ids are 0..N-1 (eod = N).")
    d.add("--data-cache-path", default=None,
          help="Directory for the dataset index caches (default: next to the data).")
    d.add("--reset-position-ids", action="store_true", help="Restart positions after EOD.")
    d.add("--reset-attention-mask", action="store_true",
          help="Attend only within the same document (mask across EOD).")
    d.add("--eod-mask-loss", action="store_true", help="No loss on EOD tokens.")
    d.add("--loss-on-targets-only", action="store_true",
          help="Prefix-LM: no loss on the prefix (only on the targets after the split); "
               "needs --prefix-lm.")
    d.add("--num-workers", type=int, default=0, help="Data-loader worker processes.")
    d.add("--valid-num-workers", type=int, default=None, no_effect=True,
          help="Accepted for compatibility; no effect on results (validation uses "
               "--num-workers).")
    d.add("--data-impl", default="mmap", choices=["mmap", "infer"],
          help="Indexed dataset implementation; only mmap (megatron-core's format) exists.")
    for split, many in (("train", "ONE group"), ("valid", "one or more groups, each "
                         "evaluated and logged on its own"), ("test", "one or more groups")):
        d.add(f"--{split}-weighted-split-paths", nargs="*", default=[],
              help=f"BigScience's per-split data ({many}), instead of --data-path/--split: "
                   f"'NAME: WEIGHT START:END PREFIX, WEIGHT START:END PREFIX ...'; each "
                   f"dataset contributes its documents in the fraction [START, END).")
        d.add(f"--{split}-weighted-split-paths-path", default=None,
              help=f"A file holding the --{split}-weighted-split-paths groups on one line, "
                   f"each in double quotes (what BigScience's load_ratios_meg_ds_format.py "
                   f"writes).")
    d.add("--mock-data", action="store_true", help="Random tokens instead of --data-path.")
