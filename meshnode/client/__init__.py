"""The mesh client (SPEC section 9): ``open_mesh_client`` and what its calls return."""

from meshnode.client.client import MeshClient as MeshClient
from meshnode.client.client import open_mesh_client as open_mesh_client
from meshnode.client.response import CallReset as CallReset
from meshnode.client.response import MeshClientError as MeshClientError
from meshnode.client.response import MeshResponse as MeshResponse
from meshnode.client.response import MeshStatusError as MeshStatusError
from meshnode.client.response import MeshUnavailable as MeshUnavailable
from meshnode.client.response import StreamingResponse as StreamingResponse
