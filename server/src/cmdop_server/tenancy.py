"""The one place that scopes workspace-owned data to a workspace.

Models holding tenant data inherit ``WorkspaceOwned``. Their ``objects`` manager refuses to
build a query until it is told the workspace (``Model.objects.in_workspace(ws)``), so a
forgotten filter raises instead of leaking rows across tenants. ``unscoped`` exists for
system jobs (retention, migrations, admin commands) and must never serve a request.
"""

from __future__ import annotations

from django.db import models


class UnscopedQueryError(RuntimeError):
    """A workspace-owned model was queried without naming the workspace."""


class WorkspaceScopedManager(models.Manager):
    def get_queryset(self):
        raise UnscopedQueryError(
            f"{self.model.__name__} is workspace-owned: use .objects.in_workspace(workspace)"
        )

    def in_workspace(self, workspace) -> models.QuerySet:
        if workspace is None or getattr(workspace, "pk", workspace) is None:
            raise UnscopedQueryError("in_workspace() needs a saved workspace")
        return super().get_queryset().filter(workspace=workspace)


class WorkspaceOwned(models.Model):
    workspace = models.ForeignKey("identity.Workspace", on_delete=models.CASCADE)

    objects = WorkspaceScopedManager()
    unscoped = models.Manager()

    class Meta:
        abstract = True
        base_manager_name = "unscoped"
        default_manager_name = "unscoped"
