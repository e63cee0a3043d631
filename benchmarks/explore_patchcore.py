"""Exploration of PatchCore settings on magnetic_tile, with per-defect image AND pixel AUROC.

    python benchmarks/explore_patchcore.py THREADS key=value,key=value ...
    e.g. python benchmarks/explore_patchcore.py 1 input_mode=native,coreset_ratio=0.002,batch_size=1

Each argument after THREADS is one PatchCoreConfig; its recorded output is in benchmarks/explore_patchcore.log.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(int(sys.argv[1]))
from core.data.dataset import load_category
from core.data.imageio import load_image, load_mask
from core.models.patchcore import PatchCore, PatchCoreConfig
from core.scores import metrics

cat = load_category(Path(__file__).resolve().parents[2] / 'shared' / 'data', 'magnetic_tile')
train = [load_image(s.path) for s in cat.train]
test = [load_image(s.path) for s in cat.test]
labels = np.array([s.label for s in cat.test]); defects = np.array([s.defect for s in cat.test])
masks = [load_mask(s.mask_path, im.shape[:2]) if s.mask_path else np.zeros(im.shape[:2], bool) for s, im in zip(cat.test, test)]
for spec in sys.argv[2:]:
    kv = dict(x.split('=') for x in spec.split(','))
    cfg = PatchCoreConfig.from_dict({k: (tuple(v.split('+')) if k == 'layers' else type(getattr(PatchCoreConfig(), k))(v)) for k, v in kv.items()})
    pc = PatchCore(cfg)
    t0 = time.time(); rep = pc.fit(train); t1 = time.time()
    preds = pc.predict(test); t2 = time.time()
    scores = np.array([p.score for p in preds]); maps = [p.anomaly_map for p in preds]
    maxs = np.array([m.max() for m in maps])
    pa = metrics.roc_auc(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    ap = metrics.aupro(masks, maps)
    print(f"{spec}: img {metrics.roc_auc(labels, scores):.4f} (mapmax {metrics.roc_auc(labels, maxs):.4f}) pix {pa:.4f} aupro {ap:.4f} "
          f"patches {rep.num_patches} bank {rep.memory_bank} fit {t1-t0:.0f}s test {t2-t1:.0f}s", flush=True)
    line = []
    for d in sorted(set(defects[labels == 1])):
        sel = (defects == d) | (defects == 'good'); idx = np.flatnonzero(sel)
        pd_ = metrics.roc_auc(np.concatenate([masks[i].ravel() for i in idx]), np.concatenate([maps[i].ravel() for i in idx]))
        line.append(f"{d}: img {metrics.roc_auc(labels[sel], scores[sel]):.3f} pix {pd_:.3f}")
    print("   " + " | ".join(line), flush=True)
