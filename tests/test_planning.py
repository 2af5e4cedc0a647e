"""The discrete CEM planner (``torchwm_rl.planning``) and the planner's distillation into a policy
inside the model (``torchwm_rl.distillation``): the pixel demo's training (issue 22).

The planning env here is a toy with a known best action: the state is a position ``p`` (the cart),
action 1 moves it +1 and action 0 moves it -1, and the continue head says 1 while ``|p| <= 2``
and 0.1 beyond. From ``p = 2`` only action 0 keeps the episode alive, from ``p = -2`` only 1.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from torchwm_rl import WorldModelEnv
from torchwm_rl.distillation import Student, distil, imagined_states, label, merge_members
from torchwm_rl.planning import NO_DRAWN_ENDS, DiscreteCEMPlanner, expected_steps_alive

OBS = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)


def walk(model, state, action):
    nxt = state + (2.0 * torch.as_tensor(action).float() - 1.0)[..., None]
    return {"state": nxt, "observation": nxt, "reward": torch.ones(nxt.shape[:-1])}


def safe_band(model, next_state):
    return torch.where(next_state[..., 0].abs() <= 2, 1.0, 0.1)


def toy_env(rows: int, threshold: float = NO_DRAWN_ENDS, space=gym.spaces.Discrete(2)) -> WorldModelEnv:
    return WorldModelEnv(None, observation_space=OBS, action_space=space,
                         reset_fn=lambda model, batch_size=(): torch.zeros(*batch_size, 1), transition_fn=walk,
                         continue_fn=safe_band, continue_threshold=threshold, batch_size=(rows,), seed=0)


def test_expected_steps_alive_is_the_sum_of_running_continue_products_up_to_the_first_end():
    prob = torch.tensor([[0.9, 0.5, 1.0], [0.9, 0.5, 1.0], [0.2, 1.0, 1.0]])
    done = torch.tensor([[False, True, False], [False, False, False], [True, False, False]])
    out = TensorDict({"next": {"continue_prob": prob[..., None], "done": done[..., None]}}, [3, 3])
    # the ending step counts (its own probability is in the product); nothing after it does
    assert expected_steps_alive(out).tolist() == pytest.approx([0.9 + 0.45, 0.9 + 0.45 + 0.45, 0.2])
    with pytest.raises(KeyError, match="continue_prob"):
        expected_steps_alive(TensorDict({"next": {"done": done[..., None]}}, [3, 3]))


def test_the_planner_picks_the_action_that_stays_in_the_safe_band():
    made = []

    def make_env(rows):
        made.append(rows)
        return toy_env(rows)

    planner = DiscreteCEMPlanner(make_env, candidates=16, horizon=4, iters=2, seed=0)
    states = torch.tensor([[2.0], [-2.0], [2.0], [-2.0]])
    assert planner(states).tolist() == [0, 1, 0, 1]
    assert planner(states[:2]).tolist() == [0, 1]
    assert planner(states).tolist() == [0, 1, 0, 1]
    assert made == [4 * 16, 2 * 16]  # one env per row count, kept


def test_the_planner_repeats_with_its_seed_and_its_draws_depend_on_it():
    def plan(seed):
        planner = DiscreteCEMPlanner(toy_env, candidates=4, horizon=6, iters=1, seed=seed)
        return torch.stack([planner(torch.zeros(8, 1)) for _ in range(4)])  # from 0 either way is safe at first

    assert torch.equal(plan(3), plan(3))
    assert not torch.equal(plan(3), plan(4))


def test_the_planner_refuses_what_it_cannot_plan():
    with pytest.raises(ValueError, match="candidates must be an int >= 1"):
        DiscreteCEMPlanner(toy_env, candidates=0)
    for space in (gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (1,))):
        with pytest.raises(ValueError, match="Discrete\\(2\\) integer action"):
            DiscreteCEMPlanner(lambda rows: toy_env(rows, space=space), candidates=2)(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="built with no warm_rows"):
        DiscreteCEMPlanner(toy_env, candidates=2)(torch.zeros(1, 1), torch.tensor([0]))
    with pytest.raises(ValueError, match="1-dim batch"):
        DiscreteCEMPlanner(toy_env, candidates=2)(torch.zeros(()))
    warm = DiscreteCEMPlanner(toy_env, candidates=2, horizon=3, warm_rows=4)
    with pytest.raises(ValueError, match="pass rows"):
        warm(torch.zeros(2, 1))
    assert warm(torch.tensor([[2.0], [-2.0]]), torch.tensor([1, 3])).shape == (2,)
    assert warm.probs[[0, 2]].eq(0.5).all()  # not planned for: untouched
    # planned rows keep their elite's probabilities shifted by a step (one elite of 2: 0.05 or 0.95), then 0.5
    assert not warm.probs[[1, 3], :-1].eq(0.5).any() and warm.probs[[1, 3], -1].eq(0.5).all()


def test_the_student_folds_its_standardisation_into_the_first_layer():
    from torch import nn

    features = torch.randn(512, 3) * torch.tensor([10.0, 0.1, 1.0]) + torch.tensor([5.0, -3.0, 0.0])
    actions = (features[:, 0] > 5.0).long()
    torch.manual_seed(0)
    unfit = Student(features, actions, steps=0, hidden=16)  # the initial weights, folded
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Linear(3, 16), nn.ELU(), nn.Linear(16, 16), nn.ELU(), nn.Linear(16, 2))  # same init
    mean, std = features.mean(0), features.std(0) + 1e-3
    with torch.no_grad():
        assert torch.allclose(unfit.net(features), twin((features - mean) / std), atol=1e-5)
    torch.manual_seed(0)
    student = Student(features, actions, steps=300, hidden=16)
    assert student.train_accuracy > 0.95
    test = torch.randn(256, 3) * torch.tensor([10.0, 0.1, 1.0]) + torch.tensor([5.0, -3.0, 0.0])
    assert (student.actions(test) == (test[:, 0] > 5.0).long()).float().mean() > 0.9  # raw features in, no rescale
    assert student(test[:1]) == int(student.actions(test[:1]))
    assert not any(p.requires_grad for p in student.net.parameters())
    with pytest.raises(ValueError, match="at least 2 labelled states, got 1"):
        Student(features[:1], actions[:1])


def test_merged_members_give_the_mean_of_their_logits_in_one_network_of_the_same_form():
    import copy

    from torch import nn

    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 5), nn.ELU(), nn.Linear(5, 2)) for _ in range(3)]
    wide = merge_members(nets)
    assert [type(layer) for layer in wide] == [type(layer) for layer in nets[0]]
    assert tuple(wide[0].weight.shape) == (12, 3) and tuple(wide[2].weight.shape) == (15, 12)
    assert tuple(wide[4].weight.shape) == (2, 15)
    x = torch.randn(50, 3)
    with torch.no_grad():
        assert torch.allclose(wide(x), torch.stack([n(x) for n in nets]).mean(0), atol=1e-6)
    state = torch.get_rng_state()
    doubles = merge_members([copy.deepcopy(n).double() for n in nets])
    doubles_member = copy.deepcopy(nets[1]).double()
    assert torch.equal(torch.get_rng_state(), state)  # built without drawing
    assert doubles[0].weight.dtype == torch.float64
    tanh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="network 1 is .*Tanh"):
        merge_members([nets[0], tanh])
    with pytest.raises(ValueError, match=r"network 1 has \(weight shapes, dtype, device\)"):
        merge_members([nets[0], nn.Sequential(nn.Linear(3, 5), nn.ELU(), nn.Linear(5, 5), nn.ELU(), nn.Linear(5, 2))])
    with pytest.raises(ValueError, match="network 1 has .*float64.*members must match"):  # no silent cast
        merge_members([nets[0], doubles_member])
    with pytest.raises(ValueError, match="no networks"):
        merge_members([])


def test_a_student_of_several_members_is_their_merged_fits():
    torch.manual_seed(0)
    features = torch.randn(256, 3) * torch.tensor([10.0, 0.1, 1.0]) + torch.tensor([5.0, -3.0, 0.0])
    actions = (features[:, 0] > 5.0).long()
    torch.manual_seed(0)
    trio = Student(features, actions, steps=300, hidden=8, members=3)
    assert trio.net[0].out_features == 24 and trio.train_accuracy > 0.9
    torch.manual_seed(0)  # the same draws, one member after another, folded the same way
    x = (features - features.mean(0)) / (features.std(0) + 1e-3)
    members = [Student._fit(x, actions, 300, 8, 2, 0.3) for _ in range(3)]
    with torch.no_grad():
        assert torch.allclose(trio.net(features), torch.stack([m(x) for m in members]).mean(0), atol=1e-4)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="members must be an int >= 1"):
            Student(features, actions, members=bad)


def test_label_plans_in_chunks_and_keeps_the_order():
    calls = []

    def planner(states):
        calls.append(len(states))
        return states[:, 0].long()

    assert label(planner, torch.arange(10.0)[:, None], chunk=4).tolist() == list(range(10))
    assert calls == [4, 4, 2]


class Sign:
    """A planner that knows the toy's answer: away from the nearer edge."""

    calls = 0

    def __call__(self, states):
        Sign.calls += len(states)
        return (states[:, 0] < 0).long()


def test_imagined_states_stop_at_each_rows_first_imagined_end():
    env = toy_env(2, threshold=0.5)
    torch.manual_seed(0)
    always_right = Student(torch.tensor([[0.0], [1.0]]), torch.tensor([1, 1]), steps=50, hidden=4)
    states, alive = imagined_states(env, lambda s: s, always_right, torch.tensor([[0.0], [2.0]]), length=5)
    # from 0: 1, 2 alive, then 3 ends (and is not kept); from 2: 3 ends at once
    assert states[:, 0].tolist() == [1.0, 2.0] and alive == 1.0
    with pytest.raises(RuntimeError, match="no new states"):
        imagined_states(env, lambda s: s, always_right, torch.tensor([[2.0], [2.0]]), length=5)


def test_distil_labels_the_bank_then_the_students_imagined_states_round_by_round():
    torch.manual_seed(0)
    bank = torch.tensor([[-2.0], [-1.0], [0.0], [1.0], [2.0]] * 4)
    seen = []
    Sign.calls = 0
    student, records = distil(Sign(), lambda s: s, bank, [6, 4, 4], np.random.default_rng(0), env=toy_env(3, 0.5),
                              starts=3, length=3, fit_steps=200, chunk=4,
                              on_round=lambda rec, st: seen.append((rec["round"], rec["labels"])))
    assert [r["labels"] for r in records] == [6, 10, 14] and seen == [(0, 6), (1, 10), (2, 14)]
    assert Sign.calls == 14
    assert all("imagined_steps_alive" in r for r in records[:2]) and "imagined_steps_alive" not in records[2]
    assert student.actions(torch.tensor([[-1.5], [1.5]])).tolist() == [1, 0]


def test_distil_merges_final_members_fits_for_the_last_round_only():
    torch.manual_seed(0)
    bank = torch.tensor([[-2.0], [-1.0], [0.0], [1.0], [2.0]] * 4)
    widths = []
    student, _ = distil(Sign(), lambda s: s, bank, [6, 4, 4], np.random.default_rng(0), env=toy_env(3, 0.5),
                        starts=3, length=3, fit_steps=20, final_members=3,
                        on_round=lambda rec, st: widths.append(st.net[0].out_features))
    assert widths == [128, 128, 3 * 128] and student.net[0].out_features == 3 * 128
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="final_members must be an int >= 1"):
            distil(Sign(), lambda s: s, bank, [6], np.random.default_rng(0), env=toy_env(3, 0.5), starts=3,
                   final_members=bad)


def test_distil_refuses_bad_label_counts_a_small_bank_and_a_missing_env():
    bank = torch.zeros(4, 1)
    rng = np.random.default_rng(0)
    for counts in ([4, 0], [1, 2], []):
        with pytest.raises(ValueError, match="labels must be a non-empty list of ints >= 1"):
            distil(Sign(), lambda s: s, bank, counts, rng, env=toy_env(2), starts=2)
    with pytest.raises(ValueError, match="the bank has 4 states"):
        distil(Sign(), lambda s: s, bank, [5], rng, env=toy_env(2), starts=2)
    with pytest.raises(ValueError, match="the bank has 4 states"):
        distil(Sign(), lambda s: s, bank, [2], rng, env=toy_env(8), starts=8)
    with pytest.raises(ValueError, match=r"must have batch \[2\].*got None"):
        distil(Sign(), lambda s: s, bank, [2], rng, starts=2)


def test_distil_warns_and_counts_what_it_labelled_when_a_round_visits_fewer_states():
    torch.manual_seed(0)
    bank = torch.tensor([[-1.0], [0.0], [1.0], [0.0]])
    # a caller's new_states giving 2 states where 5 are asked for: all 2 labelled, said and counted
    with pytest.warns(UserWarning, match="round 0 gave 2 new states, fewer than the 5 to label"):
        _, records = distil(Sign(), lambda s: s, bank, [3, 5], np.random.default_rng(0),
                            new_states=lambda student, r: torch.tensor([[0.5], [-0.5]]), fit_steps=5)
    assert records[0]["new_labels"] == 2 and records[1]["labels"] == 5
