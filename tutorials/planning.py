"""MPC with a TorchRL planner on a bundled world model, acting in the real Gymnasium env.

    python tutorials/planning.py                  # CEM, 3 real CartPole-v1 episodes (about 3 min of CPU; timings: tutorials/README.md)
    python tutorials/planning.py --planner mppi   # MPPI with a (constant) value module
    python tutorials/planning.py --episodes 1 --max-steps 50 --candidates 32   # a quick look

The bundled CartPole model (``torchwm_rl.zoo``) has a Discrete(2) action. TorchRL's planners
(``CEMPlanner``, ``MPPIPlanner``) sample Gaussian action sequences, so this tutorial plans over a
continuous relaxation: the planning env declares a ``Box(-1, 1, (1,))`` action and maps it to the
model's discrete action with ``action_transform_fn`` (``a > 0`` pushes right). That keeps the
bundled model and its weights as they are (no second model to train and ship), and it is the
library's own hook for exactly this mapping. The real env gets the same mapping.

Every real step: the real observation is the model state (CartPole's model state IS its
observation), the planner rolls ``num_candidates`` imagined futures from it in ONE batched
``env.rollout`` per optimisation step, and the first action of the best sequence is played.
Rewards in imagination are the model's (1 per step until the model's terminal rule fires; the
planner ignores rewards after an imagined termination).
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torchrl.modules import CEMPlanner, MPPIPlanner, ValueOperator

from torchwm_rl import WorldModelEnv
from torchwm_rl.zoo import cartpole


def to_discrete(model, action):
    """The relaxation: a continuous action in [-1, 1] -> CartPole's action index (0 left, 1 right)."""
    return (action[..., 0] > 0).long()


def make_planning_env(seed: int = 0) -> WorldModelEnv:
    """The bundled CartPole model with a continuous action, unbatched: TorchRL's planners read the
    action spec as one env's and give the env a batch of (start states x candidates)."""
    return WorldModelEnv(
        cartpole.load(),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (cartpole.OBS_DIM,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
        reset_fn=cartpole.reset,
        transition_fn=cartpole.transition,
        reward_fn=cartpole.reward,
        terminal_fn=cartpole.terminated,
        action_transform_fn=to_discrete,
        seed=seed,
    )


def make_planner(env: WorldModelEnv, kind: str, horizon: int, candidates: int, iterations: int):
    if kind == "cem":
        return CEMPlanner(
            env, planning_horizon=horizon, optim_steps=iterations, num_candidates=candidates,
            top_k=max(2, candidates // 8),
        )
    # MPPI needs a value module for its advantage; a constant value leaves the imagined return
    # as the score (swap in a learned critic here)
    value = ValueOperator(ConstantValue(), in_keys=["observation"])
    from torchrl.objectives.value import TDLambdaEstimator

    advantage = TDLambdaEstimator(gamma=0.99, lmbda=0.95, value_network=value)
    return MPPIPlanner(
        env, advantage, temperature=1.0, planning_horizon=horizon, optim_steps=iterations,
        num_candidates=candidates, top_k=max(2, candidates // 8),
    )


class ConstantValue(torch.nn.Module):
    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*observation.shape[:-1], 1, device=observation.device)


def run(planner_kind: str = "cem", episodes: int = 3, max_steps: int = 500, horizon: int = 10,
        candidates: int = 32, iterations: int = 2, seed: int = 0) -> list[float]:
    """Real returns of ``episodes`` MPC episodes in Gymnasium's CartPole-v1."""
    torch.manual_seed(seed)
    env = make_planning_env(seed)
    planner = make_planner(env, planner_kind, horizon, candidates, iterations)
    real = gym.make("CartPole-v1", max_episode_steps=max_steps)
    returns = []
    for episode in range(episodes):
        obs, _ = real.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            state = torch.as_tensor(obs, dtype=torch.float32)
            # a start state: the model state (here also the observation); the env fills in the rest
            start = TensorDict({"observation": state, "model_state": state}, [])
            with torch.no_grad():
                action = planner(start)["action"]
            obs, reward, terminated, truncated, _ = real.step(int(to_discrete(None, action)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    real.close()
    return returns


def random_returns(episodes: int, max_steps: int, seed: int) -> list[float]:
    real = gym.make("CartPole-v1", max_episode_steps=max_steps)
    real.action_space.seed(seed)
    out = []
    for episode in range(episodes):
        real.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = real.step(real.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        out.append(total)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planner", choices=["cem", "mppi"], default="cem")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", choices=["full", "tiny"], default="full",
                        help="tiny: one short episode with a small search (the test run)")
    args = parser.parse_args()
    if args.budget == "tiny":
        args.episodes, args.max_steps, args.horizon, args.candidates, args.iterations = 1, 20, 5, 16, 1
    returns = run(args.planner, args.episodes, args.max_steps, args.horizon, args.candidates,
                  args.iterations, args.seed)
    baseline = random_returns(args.episodes, args.max_steps, args.seed)
    print(f"{args.planner.upper()} MPC real returns: {returns} (mean {np.mean(returns):.1f})")
    print(f"random policy real returns: {baseline} (mean {np.mean(baseline):.1f})")


if __name__ == "__main__":
    main()
