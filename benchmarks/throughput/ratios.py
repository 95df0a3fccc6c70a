"""The comparisons of `docs/bench_throughput.md` and their targets."""

import statistics


TARGETS = {
    "keras_kd_vs_torch_kd": (">=", 1.3),
    "keras_kd_vs_best_torch_kd": (">=", 1.3),
    "keras_kd_vs_keras_distillation": (">=", 1.5),
    "overhead_keras_kd": ("<=", 1.05),
}


def ratios(results, key="median_img_per_s", suffix="", repeat=None):
    """The comparisons of docs/bench_throughput.md, from median rates
    (`key`; `suffix` is appended to every name), or from the rates of one
    round-robin `repeat` (`key` then names the list of rates)."""

    def rate(label):
        value = results.get(label, {}).get(key)
        if repeat is not None and value is not None:
            value = value[repeat] if repeat < len(value) else None
        return value

    def step(label):
        r = rate(label)
        return None if r is None else 1.0 / r

    out = {}
    torch_kd = [label for label in results
                if label.partition("@")[0] == "torch_kd"]
    for ours in ("keras_kd", "keras_sakd", "keras_kd_feat"):
        for peer in torch_kd + ["keras_distillation", "keras_kd"]:
            if ours != peer and rate(ours) and rate(peer):
                out[f"{ours}_vs_{peer}{suffix}"] = round(
                    rate(ours) / rate(peer), 3)
    if rate("keras_kd") and torch_kd:
        best = max(torch_kd, key=rate)
        out[f"best_torch_kd{suffix}"] = best
        out[f"keras_kd_vs_best_torch_kd{suffix}"] = round(
            rate("keras_kd") / rate(best), 3)
    for distill in ("keras_kd", "keras_sakd", "keras_kd_feat"):
        if step(distill) and step("teacher_infer") and step("student_step"):
            out[f"overhead_{distill}{suffix}"] = round(
                step(distill) / (step("teacher_infer")
                                 + step("student_step")), 3)
    for label in torch_kd:
        options = label.partition("@")[2]
        options = "@" + options if options else ""
        teacher = f"torch_teacher_infer{options}"
        student = f"torch_student_step{options}"
        if step(label) and step(teacher) and step(student):
            out[f"overhead_{label}{suffix}"] = round(
                step(label) / (step(teacher) + step(student)), 3)
    for part in ("teacher_infer", "student_step"):
        for label in results:
            if label.partition("@")[0] == f"torch_{part}" and rate(part):
                out[f"{part}_keras_vs_{label}{suffix}"] = round(
                    rate(part) / rate(label), 3)
    return out


def paired_ratios(results):
    """Median over repeats of the ratios within each round-robin repeat:
    peers of one repeat ran minutes apart at most, so a drift of the
    machine's load between repeats cancels out of these."""
    repeats = min(len(r["img_per_s"]) for r in results.values())
    per_repeat = [ratios(results, "img_per_s", repeat=r)
                  for r in range(repeats)]
    out = {}
    for name in per_repeat[0] if per_repeat else ():
        values = [d.get(name) for d in per_repeat]
        if all(isinstance(v, float) for v in values):
            out[name] = round(statistics.median(values), 3)
    return out


def check_targets(pair_ratios):
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = pair_ratios.get(key)
        if value is None:
            continue
        hit = value >= bound if op == ">=" else value <= bound
        out[key] = {"value": value, "target": f"{op} {bound}",
                    "hit": bool(hit)}
    return out
