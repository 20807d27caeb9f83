"""shortcut-policy: robot policies that act in one network call (shortcut models, Frans et al., ICLR 2025).

Importing the package loads nothing heavy; the parts are imported where they are used:
``shortcut_policy.policy.ShortcutPolicy``, ``shortcut_policy.task``, ``shortcut_policy.data``,
``shortcut_policy.deploy`` (numpy-only runtime and real-time loop), ``shortcut_policy.envs``.
"""
__version__ = "0.2.0"
