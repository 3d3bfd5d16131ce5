# run `python -m jetspec_core ...` with tree_build.PRUNE_FROM set from $PF (measurement only)
import os, runpy, sys
import jetspec_core.kernels.tree_build as tb
tb.PRUNE_FROM = int(os.environ["PF"])
print("PRUNE_FROM", tb.PRUNE_FROM, file=sys.stderr)
sys.argv = ["jetspec_core"] + sys.argv[1:]
runpy.run_module("jetspec_core", run_name="__main__")
