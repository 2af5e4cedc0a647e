"""CleanRL-style PPO (continuous actions) on the Gymnasium vector export of a world model.

One file, read top to bottom, no framework: the structure of CleanRL's
``ppo_continuous_action.py``, with the environment replaced by imagined rollouts. The N
"envs" are ONE batched ``WorldModelEnv`` exported with ``.to_gymnasium()``: a
``gymnasium.vector.VectorEnv`` whose step is a single model call for all N envs.

    python tutorials/cleanrl_ppo.py                 # full budget (timings: tutorials/README.md)
    python tutorials/cleanrl_ppo.py --budget tiny   # smoke run (seconds; used by the test suite)

The world model and its adapter functions come from ``point_mass.py`` next to this script: a
stand-in for your trained model, imported like any other dependency.
"""

from __future__ import annotations

import argparse
import random
import time

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions.normal import Normal

from torchwm_rl import WorldModelEnv

# the stand-in for your trained world model, its adapters and spaces (tutorials/point_mass.py)
from point_mass import ACTION_SPACE, VECTOR_SPACE, PointMassWorldModel, reset_vector, transition_vector


# ----------------------------------------------------------------------------- the agent
def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs):
        super().__init__()
        obs_dim = int(np.prod(envs.single_observation_space.shape))
        act_dim = int(np.prod(envs.single_action_space.shape))
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, act_dim), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        action_mean = self.actor_mean(x)
        action_std = torch.exp(self.actor_logstd.expand_as(action_mean))
        probs = Normal(action_mean, action_std)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


# ------------------------------------------------------------------------------- arguments
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--budget", choices=["tiny", "full"], default="full")
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--total-timesteps", type=int, default=None, help="override the budget's total steps")
args = parser.parse_args()
num_envs, num_steps, total_timesteps = {"tiny": (8, 16, 512), "full": (64, 64, 300_000)}[args.budget]
total_timesteps = args.total_timesteps or total_timesteps
learning_rate, gamma, gae_lambda, update_epochs, num_minibatches = 3e-4, 0.99, 0.95, 10, 4
clip_coef, ent_coef, vf_coef, max_grad_norm = 0.2, 0.0, 0.5, 0.5
batch_size = num_envs * num_steps
minibatch_size = batch_size // num_minibatches
num_iterations = total_timesteps // batch_size
print_every = max(1, round(num_iterations / 10))  # progress lines: about every 10% of the iterations

random.seed(args.seed)
np.random.seed(args.seed)
torch.manual_seed(args.seed)
torch.set_num_threads(1)
device = torch.device("cpu")

# ------------------------------------------------------------------------------ env setup
# CleanRL would build gym.vector.SyncVectorEnv([make_env(i) for i in range(num_envs)]): N env
# objects, N model calls per step. The batched export is already a VectorEnv. SAME_STEP
# autoreset keeps CleanRL's bookkeeping exact: when done[t] is set, obs[t+1] starts a new episode.
world_model = PointMassWorldModel(seed=0)
envs = WorldModelEnv(
    world_model,
    observation_space=VECTOR_SPACE,
    action_space=ACTION_SPACE,
    reset_fn=reset_vector,
    transition_fn=transition_vector,
    max_episode_steps=50,
    batch_size=(num_envs,),
).to_gymnasium(autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
assert isinstance(envs.single_action_space, gym.spaces.Box), "only continuous actions are supported"

agent = Agent(envs).to(device)
optimizer = torch.optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5)

# storage
obs = torch.zeros((num_steps, num_envs) + envs.single_observation_space.shape).to(device)
actions = torch.zeros((num_steps, num_envs) + envs.single_action_space.shape).to(device)
logprobs = torch.zeros((num_steps, num_envs)).to(device)
rewards = torch.zeros((num_steps, num_envs)).to(device)
dones = torch.zeros((num_steps, num_envs)).to(device)
values = torch.zeros((num_steps, num_envs)).to(device)

# ------------------------------------------------------------------------------- training
global_step = 0
start_time = time.time()
episode_returns = []
next_obs, _ = envs.reset(seed=args.seed)
next_obs = torch.Tensor(next_obs).to(device)
next_done = torch.zeros(num_envs).to(device)

for iteration in range(1, num_iterations + 1):
    frac = 1.0 - (iteration - 1.0) / num_iterations
    optimizer.param_groups[0]["lr"] = frac * learning_rate

    for step in range(0, num_steps):
        global_step += num_envs
        obs[step] = next_obs
        dones[step] = next_done

        with torch.no_grad():
            action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step] = value.flatten()
        actions[step] = action
        logprobs[step] = logprob

        # the world model clamps its actions to [-1, 1] itself (a learned model may not:
        # then clip here, as CleanRL's ClipAction wrapper does)
        next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
        next_done = np.logical_or(terminations, truncations)
        rewards[step] = torch.tensor(reward).to(device).view(-1)
        next_obs, next_done = torch.Tensor(next_obs).to(device), torch.Tensor(next_done).to(device)

        if "episode" in infos:
            episode_returns.extend(infos["episode"]["r"][infos["_episode"]].tolist())

    # bootstrap value if not done
    with torch.no_grad():
        next_value = agent.get_value(next_obs).reshape(1, -1)
        advantages = torch.zeros_like(rewards).to(device)
        lastgaelam = 0
        for t in reversed(range(num_steps)):
            if t == num_steps - 1:
                nextnonterminal = 1.0 - next_done
                nextvalues = next_value
            else:
                nextnonterminal = 1.0 - dones[t + 1]
                nextvalues = values[t + 1]
            delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
            advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
        returns = advantages + values

    # flatten the batch
    b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
    b_logprobs = logprobs.reshape(-1)
    b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
    b_advantages = advantages.reshape(-1)
    b_returns = returns.reshape(-1)
    b_values = values.reshape(-1)

    # optimize the policy and value network
    b_inds = np.arange(batch_size)
    for epoch in range(update_epochs):
        np.random.shuffle(b_inds)
        for start in range(0, batch_size, minibatch_size):
            mb_inds = b_inds[start : start + minibatch_size]
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
            logratio = newlogprob - b_logprobs[mb_inds]
            ratio = logratio.exp()

            mb_advantages = b_advantages[mb_inds]
            mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

            pg_loss1 = -mb_advantages * ratio
            pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
            pg_loss = torch.max(pg_loss1, pg_loss2).mean()

            v_loss = 0.5 * ((newvalue.view(-1) - b_returns[mb_inds]) ** 2).mean()
            entropy_loss = entropy.mean()
            loss = pg_loss - ent_coef * entropy_loss + v_loss * vf_coef

            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
            optimizer.step()

    if iteration % print_every and iteration != num_iterations:
        continue  # one line about every 10% of the run, and the last one
    recent = f"{np.mean(episode_returns[-100:]):8.2f}" if episode_returns else "    none"
    sps = int(global_step / (time.time() - start_time))
    print(f"iteration {iteration:4d}  global_step {global_step:7d}  mean return (last 100) {recent}  SPS {sps}")

envs.close()
print(f"episodes {len(episode_returns)}  first 100 mean {np.mean(episode_returns[:100]):.2f}  "
      f"last 100 mean {np.mean(episode_returns[-100:]):.2f}")
