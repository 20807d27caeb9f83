"""The real-time controller drives the task simulator in wall-clock time: `shortcut-deploy-sim`.

    python scripts/deploy_sim.py --checkpoint runs/S/checkpoints/latest.pt --num-inference-steps 1 16 --auto
"""
from shortcut_policy.deploy.cli import deploy_sim_main

if __name__ == "__main__":
    deploy_sim_main()
