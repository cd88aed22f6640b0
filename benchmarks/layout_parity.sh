#!/bin/bash
# Usage: bash benchmarks/layout_parity.sh (needs a worktree of e71c281 at /tmp/old15: git worktree add --detach /tmp/old15 e71c281,
# and the dev_styles corpus of benchmarks/dev_corpus.py; paths below). Writes /tmp/bench15/*.
# Same inputs, same settings: pre-refactor main (e71c281) vs main now. Both with the same venv.
export TF_CPP_MIN_LOG_LEVEL=3 DOCSORT_OFFLINE=1
PY=/work/main/.venv/bin/python
mkdir -p /tmp/bench15 && cd /tmp/bench15
for corpus in sample:/work/main/sample_docs dev_styles:/work/wt13e/benchmarks/out/dev_styles; do
  name=${corpus%%:*}; src=${corpus#*:}
  for ver in ${VERS:-old new}; do
    if [ $ver = old ]; then mod=docsort.cli; export PYTHONPATH=/tmp/old15; else mod=docsort.faces.cli; unset PYTHONPATH; fi
    c=/tmp/bench15/$name-$ver; rm -rf $c
    /usr/bin/time -f "$name $ver ingest %e s" nice -n 10 $PY -m $mod ingest $src -c $c > $c.log 2>&1
    /usr/bin/time -f "$name $ver cluster %e s" nice -n 10 $PY -m $mod cluster -c $c >> $c.log 2>&1
    nice -n 10 $PY -m $mod evaluate -c $c --labels $src/labels.csv --json $c.eval.json >> $c.log 2>&1
    tail -2 $c.log
  done
done
