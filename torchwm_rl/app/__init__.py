"""The application built on the library, one module per thing it runs:

* :mod:`.cli`: the ``torchwm-rl`` command line; parses arguments and runs a command module
  (each defines ``command(args, started)``), imported only when that command runs;
* commands: :mod:`.demo` (``demo [TASK]``: picks the task's demo; ``load_policy``),
  :mod:`.train_model`, :mod:`.mbpo` (MBPO online and its SAC baseline), :mod:`.check`;
* demos: :mod:`.demo_cartpole` (PPO in the bundled CartPole model), :mod:`.demo_pendulum` (SAC in
  the Pendulum ensemble);
* shared by them: :mod:`.runs` (demo settings, run folder, result record, strict JSON, plotting
  backend), :mod:`.progress` (progress lines) and :mod:`.sac` (SAC with TorchRL, for the Pendulum
  demo, MBPO and the benchmarks). :mod:`.runs` and :mod:`.progress` import no demo or command.

The library itself (the envs, the adapter, ``reality_check``, the bundled models in
:mod:`torchwm_rl.zoo`) never imports it, so its extra dependencies (``tqdm``, matplotlib) stay
out of ``import torchwm_rl``; ``tests/unit/test_layout.py`` checks the layout (no import cycles)."""
