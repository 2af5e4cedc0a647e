"""Bring your own model: from real data to a policy scored in reality, on Acrobot-v1.

The whole path a world model takes through torchwm-rl, on an env that is neither CartPole nor
Pendulum, in seven steps:

1. collect real transitions from ``Acrobot-v1`` (random actions, each held a few steps);
2. fit a small model: an MLP predicting the change of Acrobot's internal state (two angles,
   two angular velocities) from the state and the action;
3. wrap it: ``WorldModelEnv`` with a reset and a transition function (the adapter), observing
   what the real env observes (cos/sin of the angles and the velocities, 6 numbers);
4. check it: ``torchwm_rl.app.check.check_env`` (what ``torchwm-rl check`` runs);
5. train: Stable-Baselines3 PPO on ``env.to_sb3()``, in the model only;
6. reality check: ``reality_check(agent, env, gym.make("Acrobot-v1"), set_real_state=...)``:
   Acrobot's state is not its observation, so we say how to put the real env in a start state;
7. plot the report: ``report.plot("acrobot_reality.png")``.

    python tutorials/bring_your_own_model.py                 # full budget (timings: tutorials/README.md)
    python tutorials/bring_your_own_model.py --budget tiny   # smoke run (seconds; used by the tests)
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from torchwm_rl import WorldModelEnv, reality_check

# budget: (real transitions, fitting epochs, PPO steps, PPO steps per env and rollout, reality-check episodes)
BUDGETS = {"tiny": (2_000, 2, 1_024, 32, 2), "full": (40_000, 30, 200_000, 256, 20)}
NUM_ENVS = 16  # imagined envs, one model call per step for all of them
ACROBOT = gym.make("Acrobot-v1")  # the real env: its spaces, and the one we score in


# --------------------------------------------------------------- 1. collect real data
def collect(n: int, seed: int = 0, hold: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` real transitions ``(state, action, next_state)`` of Acrobot's internal state
    (``env.unwrapped.state``), under random actions each held for ``hold`` steps (longer
    swings than one random action per step)."""
    env = gym.make("Acrobot-v1")
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    states, actions, next_states = [], [], []
    action = 0
    for t in range(n):
        if t % hold == 0:
            action = int(rng.integers(3))
        state = np.array(env.unwrapped.state)
        _, _, terminated, truncated, _ = env.step(action)
        states.append(state)
        actions.append(action)
        next_states.append(np.array(env.unwrapped.state))
        if terminated or truncated:
            env.reset()
    as_tensor = lambda x: torch.as_tensor(np.array(x), dtype=torch.float32)  # noqa: E731
    return as_tensor(states), torch.as_tensor(actions), as_tensor(next_states)


# ------------------------------------------------------------------- 2. fit a model
def features(state: torch.Tensor) -> torch.Tensor:
    """Acrobot's observation of a state ``[..., 4]``: cos/sin of both angles, both velocities."""
    t1, t2, d1, d2 = state.unbind(-1)
    return torch.stack([t1.cos(), t1.sin(), t2.cos(), t2.sin(), d1, d2], -1)


def wrap_angles(state: torch.Tensor) -> torch.Tensor:
    """Angles into ``[-pi, pi)`` and velocities clipped to Acrobot's limits."""
    angles = torch.remainder(state[..., :2] + torch.pi, 2 * torch.pi) - torch.pi
    velocities = torch.stack([state[..., 2].clamp(-4 * torch.pi, 4 * torch.pi),
                              state[..., 3].clamp(-9 * torch.pi, 9 * torch.pi)], -1)
    return torch.cat([angles, velocities], -1)


class AcrobotModel(nn.Module):
    """Your trained model: the next state from the state and the (integer) action."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6 + 3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 4))
        self.register_buffer("scale", torch.ones(4))  # the typical size of a step's change

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(action.long(), 3).float()
        delta = self.net(torch.cat([features(state), one_hot], -1)) * self.scale
        return wrap_angles(state + delta)


def fit(model: AcrobotModel, data, epochs: int, seed: int = 0) -> float:
    """Least squares on the (scaled) change of state; returns the last epoch's mean loss."""
    states, actions, next_states = data
    delta = next_states - states
    delta[:, :2] = torch.remainder(delta[:, :2] + torch.pi, 2 * torch.pi) - torch.pi  # across the wrap
    model.scale.copy_(delta.std(0) + 1e-6)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(states), generator=g).split(256):
            pred = model.net(torch.cat([features(states[idx]), nn.functional.one_hot(actions[idx], 3).float()], -1))
            loss = (pred - delta[idx] / model.scale).pow(2).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += float(loss.detach()) * len(idx)
    return total / len(states)


# ------------------------------------------------------------------------ 3. wrap it
def reset_acrobot(model, seed=None, options=None, batch_size=(), generator=None):
    """Acrobot's start states: all four numbers uniform in [-0.1, 0.1]."""
    state = torch.rand(*batch_size, 4, generator=generator) * 0.2 - 0.1
    return {"state": state, "observation": features(state)}


def transition_acrobot(model, state, action):
    next_state = model(state, torch.as_tensor(action))
    t1, t2 = next_state[..., 0], next_state[..., 1]
    terminated = -t1.cos() - (t1 + t2).cos() > 1.0  # the tip above the bar: Acrobot's goal
    return {"state": next_state, "observation": features(next_state),
            "reward": terminated.float() - 1.0, "terminated": terminated}


def make_env(model: AcrobotModel, num_envs: int = NUM_ENVS, seed: int = 0) -> WorldModelEnv:
    return WorldModelEnv(
        model,
        observation_space=ACROBOT.observation_space,
        action_space=ACROBOT.action_space,
        reset_fn=reset_acrobot,
        transition_fn=transition_acrobot,
        max_episode_steps=500,
        batch_size=(num_envs,),
        seed=seed,
    )


# -------------------------------------------------------------------- 6. reality check
def set_acrobot_state(real_env, observation, model_state):
    """Put the real Acrobot in the model's start state. Its internal state (4 numbers) is not
    its observation (6), so reality_check cannot set one from the other by itself."""
    c1, s1, c2, s2, d1, d2 = (float(x) for x in observation)
    real_env.unwrapped.state = np.array([np.arctan2(s1, c1), np.arctan2(s2, c2), d1, d2])


def main(argv=None) -> None:
    from stable_baselines3 import PPO

    from torchwm_rl.app.check import check_env

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="acrobot_reality.png", help="where to write the report's plot")
    args = parser.parse_args(argv)
    n_real, epochs, ppo_steps, n_steps, episodes = BUDGETS[args.budget]
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    data = collect(n_real, seed=args.seed)
    print(f"1. collected {n_real:,} real Acrobot-v1 transitions  {time.perf_counter() - t0:5.0f} s")
    model = AcrobotModel()
    loss = fit(model, data, epochs, seed=args.seed)
    print(f"2. fitted the model: {epochs} epochs, scaled MSE {loss:.4f}  {time.perf_counter() - t0:5.0f} s")
    model.requires_grad_(False)

    env = make_env(model, seed=args.seed)
    print(f"3. wrapped it: {env.batch_size[0]} imagined envs, observation {env.observation_spec['observation'].shape}")

    report = check_env(lambda: make_env(model, num_envs=4, seed=args.seed), target="make_env", steps=520)
    print("4. " + report.format())
    assert report.ok, "fix what the check reports before training"

    agent = PPO("MlpPolicy", env.to_sb3(), n_steps=n_steps, batch_size=n_steps * NUM_ENVS // 4, n_epochs=4,
                gae_lambda=0.94, ent_coef=0.0, seed=args.seed, device="cpu", verbose=0)
    print(f"5. training SB3 PPO in the model only, {ppo_steps:,} steps ...", flush=True)
    agent.learn(total_timesteps=ppo_steps, callback=progress_callback(ppo_steps))

    reality = reality_check(agent, env, gym.make("Acrobot-v1"), episodes=episodes, seed=args.seed,
                            set_real_state=set_acrobot_state)
    print("6. reality check (the agent's deterministic actions, from the same start states):")
    print(reality.summary())
    reality.plot(args.plot)
    print(f"7. plotted the report: {args.plot}  ({time.perf_counter() - t0:.0f} s in all)")


def progress_callback(total: int):
    """One line about every 10% of PPO's steps with the mean return of the imagined episodes
    that ended so far (SB3's ``ep_info_buffer`` needs a Monitor, so we count here)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.next, self.t0, self.returns = total / 10, time.perf_counter(), []
            self.running = np.zeros(self.training_env.num_envs)

        def _on_step(self) -> bool:
            self.running += self.locals["rewards"]
            for i in np.flatnonzero(self.locals["dones"]):
                self.returns.append(self.running[i])
                self.running[i] = 0.0
            return True

        def _on_rollout_end(self) -> None:
            steps = self.model.num_timesteps
            if steps < self.next and steps < total:
                return
            self.next += total / 10
            recent = f"{np.mean(self.returns[-100:]):7.1f}" if self.returns else "none ended yet"
            print(f"   {steps:7,d}/{total:,} steps  imagined return (last 100 episodes) {recent}  "
                  f"{time.perf_counter() - self.t0:5.0f} s", flush=True)

    return Progress()


if __name__ == "__main__":
    main()
