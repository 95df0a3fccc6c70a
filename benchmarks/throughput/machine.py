"""The machine a benchmark ran on: CPU, cores, load, versions, peak RSS."""

import os
import platform
import resource
import subprocess


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True,
                             check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def physical_cores():
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count()
    except ImportError:
        return os.cpu_count()


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(
            f"{v:.2f}" for v in os.getloadavg())


def machine_info():
    info = {
        "nproc": os.cpu_count(),
        "physical_cores": physical_cores(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
    }
    from importlib import metadata

    for module, dists in (("tensorflow", ("tensorflow-cpu", "tensorflow")),
                          ("keras", ("keras",)), ("torch", ("torch",))):
        info[module] = None
        for dist in dists:
            try:
                info[module] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return info


def peak_rss_mib():
    """This process' peak resident set size in MiB.

    Linux' `VmHWM` (/proc/self/status): the high-water mark of this
    program's own address space. `getrusage(RUSAGE_SELF).ru_maxrss` is the
    fallback only: across fork + exec Linux carries the parent's peak into
    it, so a child of a 2 GB parent would report >= 2 GB.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
