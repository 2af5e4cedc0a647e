"""The application built on the library: the ``torchwm-rl`` command (:mod:`.cli`), its demos
(:mod:`.demo`: PPO in the bundled CartPole model; :mod:`.demo_sac` with :mod:`.sac`: SAC in the
Pendulum ensemble) and the ``check`` command (:mod:`.check`). The library itself (the envs, the
adapter, ``reality_check``, the bundled models in :mod:`torchwm_rl.zoo`) never imports it, so
its extra dependencies (``tqdm``, matplotlib) stay out of ``import torchwm_rl``."""
