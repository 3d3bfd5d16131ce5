"""Where the `topb` tree kernel spends its time: the kernel's source with %globaltimer stamps
stored at its phase boundaries (mask zeroing, each level's sort and keep, each level's running-
threshold merge, the global order, the node writes, the ancestor walk), run on the per-depth
top-K inputs the engine really built trees from (the shipped head decoding a prompt, eager).
Run from the repo root with JETSPEC_GGUF set: python3 docs/measured/h200-tree-phase-timing.py"""
import importlib.util
import statistics
import sys

import torch

from jetspec_core.config import DecodeConfig
from jetspec_core.drafter import HeadDrafter
from jetspec_core.engine.runner import FastDecoder
from jetspec_core.kernels import tree_build
from jetspec_core.loading import load_decoder

src = open(tree_build.__file__).read()
stamp = "tl.store(TB + {i}, tl.inline_asm_elementwise(asm='mov.u64 $0, %globaltimer;', constraints='=l', " \
        "args=[], dtype=tl.int64, is_pure=False, pack=1))"


def before(text, marker, code):
    assert marker in text, marker
    return text.replace(marker, code + "\n" + marker, 1)


src = src.replace("from ..engine.gpu_tree", "from jetspec_core.engine.gpu_tree").replace("from ..tree", "from jetspec_core.tree")
src = src.replace("def _tree_kernel(LP, TOK, ROOT, I64, F32, U8, CUM, IDX, KEY, RBUF,",
                  "def _tree_kernel(LP, TOK, ROOT, I64, F32, U8, CUM, IDX, KEY, RBUF, TB,")
src = src.replace("_tree_kernel[(1,)](lp, tok, root, ints, floats, flags, cum, idx, keys, rbuf,",
                  "_tree_kernel[(1,)](lp, tok, root, ints, floats, flags, cum, idx, keys, rbuf, TBUF,")
src = before(src, "    # zero the ancestor mask", "    " + stamp.format(i=0))
src = before(src, "    # 1. the best `size` nodes", "    " + stamp.format(i=1))
src = before(src, "        if PRUNE:  # merge the level's", "        " + stamp.format(i="2 + t"))
src = before(src, "        pbase = base\n", "        " + stamp.format(i="20 + t"))
src = before(src, "    # 2. the global order", "    " + stamp.format(i=40))
src = before(src, "    # 3. the nodes", "    " + stamp.format(i=41))
src = before(src, "    # ancestor-or-self", "    " + stamp.format(i=42))
src = before(src, "# ---------------------------------------------------------------- launcher",
             "    " + stamp.format(i=43) + "\n\n")
path = "/tmp/tree_build_timed.py"
open(path, "w").write(src)
spec = importlib.util.spec_from_file_location("tree_build_timed", path)
timed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timed)
timed.TBUF = torch.zeros(64, dtype=torch.int64, device="cuda")

loaded = load_decoder(head="assets/head", device="cuda", dtype="bfloat16", engine="fast")
samples = []
orig = tree_build.build_tree_triton


def capture(builder, lp, tok, root, budget, n_nodes, out=None):
    samples.append((builder, lp.clone(), tok.clone(), root.clone(), budget, n_nodes))
    return orig(builder, lp, tok, root, budget, n_nodes, out=out)


tree_build.build_tree_triton = capture
dec = FastDecoder(loaded.target, HeadDrafter(loaded.decoder.head, loaded.target.model), graphs=False)
prompts = ["Write a Python function that returns the n-th Fibonacci number.",
           "Explain the difference between a list and a tuple in Python, with examples."]
budgets = [int(b) for b in (sys.argv[1] if len(sys.argv) > 1 else "64,256").split(",")]
for b in budgets:
    for p in prompts:
        dec.generate(loaded.target.encode_prompt(p), DecodeConfig(budget=b, builder="topb", width=16,
                     max_new_tokens=96, stop_at_eos=False, calibrate=False))
tree_build.build_tree_triton = orig
print(f"{len(samples)} trees captured")
for b in budgets:
    got = [s for s in samples if s[4] == b]
    rows = []
    for builder, lp, tok, root, budget, n in got:
        timed.TBUF.zero_()
        t = timed.build_tree_triton(builder, lp, tok, root, budget, n)
        torch.cuda.synchronize()
        ref = orig(builder, lp, tok, root, budget, n)
        assert all(torch.equal(getattr(t, f), getattr(ref, f)) for f in ("tokens", "parents", "anc")), "timed tree differs"
        rows.append(timed.TBUF.tolist())
    rows = rows[1:]   # the first launch compiles nothing here, but may load the module: drop it

    def med(a, z):
        return statistics.median((r[z] - r[a]) / 1000 for r in rows if r[z] and r[a])
    print(f"\n== topb K=16 budget {b}: {len(rows)} trees; µs (median) by phase")
    print(f"  total {med(0, 43):.1f}; zero mask {med(0, 1):.1f}; levels {med(1, 40):.1f}; "
          f"global order {med(40, 41):.1f}; nodes {med(41, 42):.1f}; ancestor walk {med(42, 43):.1f}")
    levels = []
    for t in range(1, 16):
        prev = 1 if t == 1 else 20 + t - 1
        keep = statistics.median((r[2 + t] - r[prev]) / 1000 for r in rows if r[2 + t])
        merge = statistics.median((r[20 + t] - r[2 + t]) / 1000 for r in rows if r[20 + t])
        levels.append(f"{t}: {keep:.1f}+{merge:.1f}")
    print("  per level keep+merge: " + ", ".join(levels))
