"""The built-in env tables: env-name prefix -> embodiment tag (the reference's gr00t/eval/sim/env_utils.py table) and
prefix -> adapter. Free of gymnasium, so that merge and resume can tell what a run's registration flags changed on any
machine (rollout_args.registered_envs); rollout/envs.py registers from them."""

from __future__ import annotations

from typing import Dict

from gr00t_client import EmbodimentTag

BUILT_IN_TAGS: Dict[str, EmbodimentTag] = {
    "libero_sim": EmbodimentTag.LIBERO_PANDA,
    "simpler_env_google": EmbodimentTag.SIMPLER_ENV_GOOGLE,
    "simpler_env_widowx": EmbodimentTag.SIMPLER_ENV_WIDOWX,
    "robocasa_panda_omron": EmbodimentTag.ROBOCASA_PANDA_OMRON,
    "robocasa365_panda_omron": EmbodimentTag.ROBOCASA_PANDA_OMRON,
    "gr1_unified": EmbodimentTag.ROBOCASA_GR1_TABLETOP,
    "gr00tlocomanip_g1": EmbodimentTag.UNITREE_G1,
    "gr00tlocomanip_g1_sim": EmbodimentTag.UNITREE_G1,
    "gr00tlocomanip_g1_new": EmbodimentTag.UNITREE_G1,
    "metaworld": EmbodimentTag.NEW_EMBODIMENT,
    "pusht": EmbodimentTag.NEW_EMBODIMENT,
}

# prefix -> "module:function", imported lazily so simulators stay optional
BUILT_IN_ADAPTERS: Dict[str, str] = {
    "metaworld": "gr00t_eval.rollout.adapters.metaworld:make_metaworld_env",
    "pusht": "gr00t_eval.rollout.adapters.pusht:make_pusht_env",
}
