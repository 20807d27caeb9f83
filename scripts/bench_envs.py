"""Environment steps per second of the MuJoCo suites, with and without cameras (envs/bench.py).

    python scripts/bench_envs.py --out docs/results/suites/data/env_speed.json
"""
from shortcut_policy.envs.bench import main

if __name__ == "__main__":
    main()
