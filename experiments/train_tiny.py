"""A tiny training script that runs on any CPU in about a second: fits y = 3x - 1 by gradient descent.

Takes the flags a Sample Factory experiment takes (--experiment, --train_dir) plus --lr and --seed,
prints its progress, logs its loss with jobqueue.log_metrics (`jq results` compares them), and writes
{train_dir}/{experiment}/result.json. Resumes from its checkpoint, as a real training script should when a
preempted job is run again.
"""

import argparse
import json
import os
import random
import time

from jobqueue import log_metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--step_time", type=float, default=0.003, help="seconds per step, to look like training")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--train_dir", required=True)
    args = parser.parse_args()

    out_dir = os.path.join(args.train_dir, args.experiment)
    os.makedirs(out_dir, exist_ok=True)
    checkpoint = os.path.join(out_dir, "checkpoint.json")
    rng = random.Random(args.seed)
    data = [(x, 3 * x - 1 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(64))]
    w, b, start = rng.gauss(0, 1), rng.gauss(0, 1), 0
    if os.path.exists(checkpoint):
        with open(checkpoint) as f:
            state = json.load(f)
        w, b, start = state["w"], state["b"], state["step"]
        print(f"resuming from step {start}", flush=True)

    loss = float("nan")
    for step in range(start, args.steps):
        grad_w = sum(2 * (w * x + b - y) * x for x, y in data) / len(data)
        grad_b = sum(2 * (w * x + b - y) for x, y in data) / len(data)
        w, b = w - args.lr * grad_w, b - args.lr * grad_b
        loss = sum((w * x + b - y) ** 2 for x, y in data) / len(data)
        if step % 10 == 0 or step == args.steps - 1:
            log_metrics(step=step, loss=loss)
        if step % 50 == 0:
            print(f"step {step} loss {loss:.5f}", flush=True)
            with open(checkpoint, "w") as f:
                json.dump({"w": w, "b": b, "step": step + 1}, f)
        time.sleep(args.step_time)

    result = {"experiment": args.experiment, "lr": args.lr, "seed": args.seed, "w": w, "b": b, "loss": loss}
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f)
    print(f"done: loss {loss:.5f} (w={w:.3f}, b={b:.3f})", flush=True)


if __name__ == "__main__":
    main()
