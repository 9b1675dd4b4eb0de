"""kronfluence side of benchmarks/influence_vs_kronfluence.py (runs in .bench-envs/kronfluence).

Reads the trained digits MLP and the data from an .npz written by the benchmark, fits EK-FAC
factors with kronfluence's defaults (sampled-label Fisher) and computes the 100 x 1,000 pairwise
scores at the requested dampings. Writes the scores and the wall times (fit, score) to --out.
"""

import argparse
import json
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

warnings.filterwarnings("ignore")  # kronfluence's GradScaler FutureWarning on CPU


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dampings", default="1e-3,1e-5")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t_import = time.perf_counter()
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    import_s = time.perf_counter() - t_import

    d = np.load(args.data)
    sizes = [d["w0"].shape[1]] + [d[f"w{i}"].shape[0] for i in range(3)]
    layers = []
    for i in range(3):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(d[f"w{i}"]))
            lin.bias.copy_(torch.from_numpy(d[f"b{i}"]))
        layers += [lin] + ([nn.ReLU()] if i < 2 else [])
    model = nn.Sequential(*layers).eval()

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    task = Classification()
    model = prepare_model(model, task)
    train = TensorDataset(torch.from_numpy(d["x_train"]), torch.from_numpy(d["y_train"]).long())
    query = TensorDataset(torch.from_numpy(d["x_query"]), torch.from_numpy(d["y_query"]).long())
    dampings = [float(s) for s in args.dampings.split(",")]
    out, times = {}, {"import_s": import_s}
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer(analysis_name="bench", model=model, task=task, cpu=True, output_dir=tmp)
        t0 = time.perf_counter()
        analyzer.fit_all_factors(
            factors_name="ekfac",
            dataset=train,
            per_device_batch_size=250,
            factor_args=FactorArguments(strategy="ekfac"),
            overwrite_output_dir=True,
        )
        times["fit_s"] = time.perf_counter() - t0
        for i, damping in enumerate(dampings):
            t0 = time.perf_counter()
            analyzer.compute_pairwise_scores(
                scores_name=f"s{i}",
                factors_name="ekfac",
                query_dataset=query,
                train_dataset=train,
                per_device_query_batch_size=len(query),
                per_device_train_batch_size=250,
                score_args=ScoreArguments(damping_factor=damping),
                overwrite_output_dir=True,
            )
            scores = analyzer.load_pairwise_scores(f"s{i}")["all_modules"]
            if i == 0:
                times["score_s"] = time.perf_counter() - t0
            out[f"scores_{i}"] = scores.numpy().astype(np.float64)
    np.savez(args.out, **out)
    with open(args.out + ".json", "w") as f:
        json.dump({"times": times, "dampings": dampings, "torch": torch.__version__}, f)


if __name__ == "__main__":
    main()
