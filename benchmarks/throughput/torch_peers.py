"""The PyTorch peers: RepDistiller's KD loop (`torch_reference.py`), its
teacher inference and student step alone, timed one call at a time."""

import time

import numpy as np
from absl import app
from absl import flags

from throughput.machine import physical_cores

FLAGS = flags.FLAGS


class TorchPeer:
    """A RepDistiller-style PyTorch step timed one call at a time."""

    def __init__(self, teacher_name, student_name, batch, part,
                 options=""):
        import torch

        import torch_reference

        self.threads = FLAGS.torch_threads or physical_cores()
        channels_last = False
        for option in filter(None, options.split("_")):
            if option == "cl":
                channels_last = True
            elif option.endswith("t") and option[:-1].isdigit():
                self.threads = int(option[:-1])
            else:
                raise app.UsageError(
                    f"Unknown torch peer option {option!r}: use '<n>t' or "
                    "'cl'.")
        torch.set_num_threads(self.threads)
        torch.manual_seed(FLAGS.seed)
        x, y = batch
        self.x = torch.from_numpy(np.ascontiguousarray(
            x.transpose(0, 3, 1, 2)))  # NCHW, as RepDistiller
        self.y = torch.from_numpy(y)
        teacher = torch_reference.get(teacher_name, FLAGS.num_classes)
        student = torch_reference.get(student_name, FLAGS.num_classes)
        if channels_last:
            fmt = torch.channels_last
            teacher = teacher.to(memory_format=fmt)
            student = student.to(memory_format=fmt)
            self.x = self.x.contiguous(memory_format=fmt)
        self.trainer = torch_reference.KDTrainer(teacher, student)
        self.step = {
            "distill": lambda: self.trainer.distill_step(self.x, self.y),
            "teacher": lambda: self.trainer.teacher_inference(self.x),
            "student": lambda: self.trainer.student_step(self.x, self.y),
        }[part]

    def run(self, steps):
        import torch

        torch.set_num_threads(self.threads)  # a process-wide setting
        times = []
        cpu = time.process_time()
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        return times, time.process_time() - cpu


def torch_kd(teacher, student, batch, options=""):
    return TorchPeer(teacher, student, batch, "distill", options)


def torch_teacher_infer(teacher, student, batch, options=""):
    return TorchPeer(teacher, student, batch, "teacher", options)


def torch_student_step(teacher, student, batch, options=""):
    return TorchPeer(teacher, student, batch, "student", options)
