r"""What the decoded-image cache of image folders saves, in fresh processes.

Writes `--num_images` PNGs as an image folder (`train/` and `test/`, one
sub-folder per class; CIFAR-100 images when a local copy exists, else
generated ones), then loads the whole folder in fresh Python processes, as
a training run would:

1. cache off: decodes every file;
2. cold cache: decodes every file and writes the cache;
3. warm cache: a new process reads the cache (no file is decoded).

    python benchmarks/bench_image_cache.py                # 60,000 images
    python benchmarks/bench_image_cache.py --num_images=6000

The folder and the cache are written under `--work_dir` (default: a fresh
temporary folder, removed at the end).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 60000, "Images in the folder (train "
                     "and test together, 5:1).")
flags.DEFINE_string("work_dir", None, "Where to write the folder and the "
                    "cache (default: a temporary folder, removed).")
flags.DEFINE_string("load", None, "Internal: load this folder and print "
                    "the seconds as JSON.")


def write_folder(root, num_images):
    """Writes `root/train|test/<class>/<i>.png`; returns a description."""
    import numpy as np
    from PIL import Image

    from keras_semkd import data as kd_data

    n_test = num_images // 6
    n_train = num_images - n_test
    source = "GENERATED images (no CIFAR-100 copy)"
    if kd_data.default_cifar100_dir() is not None:
        train = kd_data.load_cifar100(None, "train")
        test = kd_data.load_cifar100(None, "test")
        splits = (("train", train, n_train), ("test", test, n_test))
        names = train.class_names["fine"]
        source = f"CIFAR-100 images ({train.source})"
    else:
        from keras_semkd.data.synthetic import load_synthetic

        splits = tuple(
            (s, load_synthetic(s, num_classes=100, num_examples=n), n)
            for s, n in (("train", n_train), ("test", n_test)))
        names = splits[0][1].class_names["fine"]
    for split, images, count in splits:
        count = min(count, len(images))
        for i in range(count):
            folder = os.path.join(root, split,
                                  names[images.labels["fine"][i]])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(np.asarray(images.images[i])).save(
                os.path.join(folder, f"{i:05d}.png"))
    return source


def timed_load(root, cache_env):
    """Seconds to load both splits in a fresh process (imports excluded)."""
    env = dict(os.environ, KERAS_SEMKD_CACHE=cache_env,
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--load={root}"],
        env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.load:
        from keras_semkd import data as kd_data

        start = time.perf_counter()
        count = 0
        for split in ("train", "test"):
            count += len(kd_data.load_image_folder_split(FLAGS.load, split))
        print(json.dumps({"seconds": time.perf_counter() - start,
                          "images": count}))
        return
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="bench_image_cache_")
    try:
        root = os.path.join(work, "images")
        cache = os.path.join(work, "cache")
        start = time.perf_counter()
        source = write_folder(root, FLAGS.num_images)
        logging.info("Wrote %d PNGs (%s) in %.0f s", FLAGS.num_images,
                     source, time.perf_counter() - start)
        rows = [("cache off (decode every file)", timed_load(root, "off")),
                ("cold cache (decode + write)", timed_load(root, cache)),
                ("warm cache, new process", timed_load(root, cache))]
        size = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, fs in os.walk(cache) for f in fs)
        print(f"{FLAGS.num_images} PNGs, {source}; {os.cpu_count()} CPUs")
        print("| load of train + test | seconds | images |")
        print("|---|---:|---:|")
        for name, r in rows:
            print(f"| {name} | {r['seconds']:.2f} | {r['images']} |")
        print(f"cache size: {size / 2**20:.0f} MiB; warm ÷ off: "
              f"{rows[2][1]['seconds'] / rows[0][1]['seconds']:.3f}")
    finally:
        if FLAGS.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
