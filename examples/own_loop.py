"""Use the force probe in your own PyTorch training loop (the README shows the same lines)."""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from hclm.forces import ForceProbe
from hclm.surrogates import logdet_entropy

digits = load_digits()
x_all = torch.tensor(digits.data / 16.0, dtype=torch.float32)
y_all = torch.tensor(digits.target)

torch.manual_seed(0)
encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
head = nn.Linear(32, 10)
optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
probe = ForceProbe(optimizer=optimizer, schedule=4)  # measure every 4th step
lam = 0.01

for step in range(300):
    index = torch.randint(0, len(y_all), (128,))
    x, y = x_all[index], y_all[index]
    optimizer.zero_grad()
    z = encoder(x)
    loss = F.cross_entropy(head(z), y)
    entropy = logdet_entropy(z)
    probe.backward(loss, entropy, lam=lam, step=step)  # replaces (loss - lam * entropy).backward()
    optimizer.step()
    if probe.awaiting_realized:  # optional: the realized entropy change on the same batch
        with torch.no_grad():
            probe.record_realized(logdet_entropy(encoder(x)))

summary = probe.summary()
print(f"regime: {summary.regime}, median relative strength {summary.relative_strength_median:.3f}, "
      f"median alignment {summary.alignment_median:.3f}, persistence {summary.persistence_median:.3f}")
