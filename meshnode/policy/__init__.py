"""Policy files: frozen models, the one converter, loading with every error listed."""

from meshnode.policy.load import PolicyError as PolicyError
from meshnode.policy.load import PolicySet as PolicySet
from meshnode.policy.load import load_policies as load_policies
from meshnode.policy.models import NodePolicy as NodePolicy
from meshnode.policy.models import UpstreamPolicy as UpstreamPolicy
from meshnode.policy.units import Address as Address
from meshnode.policy.units import Duration as Duration
