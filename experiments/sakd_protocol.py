r"""The SAKD protocols on the real CIFAR-100: teachers, screening,
confirmation, report (issue #9; docs/protocol.md, "SAKD protocols").

    python experiments/sakd_protocol.py --stage=teachers       # once, ~1.5 h
    python experiments/sakd_protocol.py --stage=screening      # designs, val
    python experiments/sakd_protocol.py --stage=confirmation   # ~8 h
    python experiments/sakd_protocol.py --stage=followup       # new designs, val
    python experiments/sakd_protocol.py --stage=report         # tables, plots
    python experiments/sakd_protocol.py --stage=report --docs=docs/method.md,BENCHMARKS.md

Every finished run appends one JSON line to
`results/sakd_<stage>/runs.jsonl` (committed); running the same command
again, on any clone, skips what is recorded there and continues. Tables,
paired statistics and plots are generated from that file alone
(`--stage=report`, also run at the end of every stage).

Runs go `--workers` at a time, each a separate process with
`--threads_per_worker` TF threads; each run is a resumable run directory
under `--runs_dir` (a run killed mid-epoch resumes from its last state).
"""

import json
import os
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("stage", "report",
                  ["teachers", "screening", "confirmation", "followup",
                   "report"],
                  "What to run.")
flags.DEFINE_list("pairs", None, "Pairs to run (default: the stage's).")
flags.DEFINE_list("arms", None, "Arms to run (default: the stage's).")
flags.DEFINE_list("seeds", None, "Seeds (default: the stage's).")
flags.DEFINE_integer("workers", 2, "Runs in parallel (processes).")
flags.DEFINE_integer("threads_per_worker", 1, "TF threads per run process.")
flags.DEFINE_string("runs_dir", os.path.join("runs", "sakd_protocol"),
                    "Run directories (checkpoints, logs; not committed).")
flags.DEFINE_string("results_dir", "results",
                    "Where results/sakd_<stage>/runs.jsonl lives.")
flags.DEFINE_string("data_dir", None,
                    "CIFAR-100 location (default: the ../shared/data copy).")
flags.DEFINE_bool("smoke", False,
                  "Tiny runs (2 steps per epoch, 1 epoch, 256 eval images) "
                  "into <results_dir>-smoke and <runs_dir>-smoke: checks the "
                  "stage end to end in minutes.")
flags.DEFINE_list("docs", [],
                  "Markdown files whose <!-- sakd_<stage>:table:start/end --> "
                  "blocks get the freshly generated table "
                  "(e.g. docs/method.md,BENCHMARKS.md).")
flags.DEFINE_string("run_one", None, "Internal: the job id to run.")


def _results_dir():
    return FLAGS.results_dir + ("-smoke" if FLAGS.smoke else "")


def _runs_dir():
    return FLAGS.runs_dir + ("-smoke" if FLAGS.smoke else "")


def main(argv):
    del argv
    from keras_semkd.protocol import sakd as protocol_runs

    options = protocol_runs.Options(
        results_dir=_results_dir(), runs_dir=_runs_dir(),
        data_dir=FLAGS.data_dir, smoke=FLAGS.smoke,
    )
    if FLAGS.run_one:
        protocol_runs.run_job(FLAGS.run_one, options)
        return
    log = protocol_runs.progress(options)
    if FLAGS.stage == "teachers":
        protocol_runs.run_teachers(options, log, workers=FLAGS.workers,
                                   threads=FLAGS.threads_per_worker,
                                   script=__file__)
    elif FLAGS.stage in ("screening", "confirmation", "followup"):
        started = time.time()
        failures = protocol_runs.run_stage(
            FLAGS.stage, options, log, pairs=FLAGS.pairs, arms=FLAGS.arms,
            seeds=FLAGS.seeds, workers=FLAGS.workers,
            threads=FLAGS.threads_per_worker, script=__file__)
        log(f"{FLAGS.stage}: finished in "
            f"{(time.time() - started) / 3600:.2f} h, "
            f"{len(failures)} failures")
        protocol_runs.report(FLAGS.stage, options, log, docs=FLAGS.docs)
        if failures:
            raise SystemExit(f"{len(failures)} runs failed: {failures}")
    else:
        for stage in ("screening", "confirmation", "followup"):
            protocol_runs.report(stage, options, log, docs=FLAGS.docs)
    print(json.dumps({"results_dir": options.results_dir}))


if __name__ == "__main__":
    app.run(main)
