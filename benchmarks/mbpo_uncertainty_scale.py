"""The scale of the ensemble's uncertainty on Pendulum-v1, to pick MOPO's lambda and MOReL's
threshold for ``torchwm-rl mbpo`` (RESULTS.md, the 5-seed uncertainty table). Not a test.

The ensemble is fit as the online loop fits it (7 members, 5 elites, 50 epochs) on the first
200 (the warm-up) and 600 random-action real steps; the uncertainty is the env's (the elites'
largest pairwise L2 distance between predicted next observations, ``max_pairwise_distance``) at
every real buffer state with its own action, printed as percentiles beside the median |reward|.
"""

import numpy as np
import torch
import gymnasium as gym

from torchwm_rl.ensemble import max_pairwise_distance
from torchwm_rl.fitting import EnsembleDynamics, EnsembleTrainer


def main(seed: int = 0) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    env = gym.make("Pendulum-v1")
    env.action_space.seed(seed)
    rows = []
    obs, _ = env.reset(seed=seed)
    for _ in range(600):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows.append((obs, action, reward, next_obs))
        obs = env.reset()[0] if terminated or truncated else next_obs
    S, A, R, N = (torch.tensor(np.array(x), dtype=torch.float32) for x in zip(*rows))
    for n in (200, 600):
        model = EnsembleDynamics(3, 1, members=7, elites=5, hidden=200, layers=3)
        EnsembleTrainer(model, max_epochs=50, seed=seed).fit(S[:n], A[:n], N[:n], R[:n])
        with torch.no_grad():
            u = max_pairwise_distance(model(S[:n], A[:n])["observation"], 1).numpy()
        q = np.percentile(u, [50, 90, 95, 99, 100])
        print(f"fit on {n} real steps: uncertainty p50/p90/p95/p99/max {np.round(q, 3).tolist()}; "
              f"median |reward| {np.median(R[:n].abs().numpy()):.2f}")


if __name__ == "__main__":
    main()
