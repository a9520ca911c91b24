import dagster as dg
from pydantic import Field

from distillery.routing import AutopilotPolicy


class GatewayResource(dg.ConfigurableResource):
    """The gateway's TOML file, read for its ``[autopilot]`` table: the rollout's stages, which every step back follows
    (``distillery.routing.step_back``), live monitoring's as the gateway's own."""

    config_file: str | None = Field(default=None, description="The gateway's TOML file (the one `distillery gateway "
                                    "--config` reads); empty: the default stages, shadow -> canary 10% -> canary 50% "
                                    "-> small.")

    def rollout_stages(self) -> AutopilotPolicy:
        if not self.config_file:
            return AutopilotPolicy()
        from distillery.gateway import load_config

        return load_config(self.config_file).autopilot
