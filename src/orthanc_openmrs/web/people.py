"""Pure: who is signed in, and what their OpenMRS privileges let them do on the review pages.

The privileges are custom ones a site creates in OpenMRS (Administration > Manage Privileges)
and grants through a role, as OpenMRS modules do for their own pages; the System Developer
role passes every check, as it does in OpenMRS itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from orthanc_openmrs.models import OpenMRSUser

SUPERUSER_ROLE = "System Developer"


class Privilege(enum.StrEnum):
    """The privilege each action needs, by its name in OpenMRS."""

    VIEW = "Imaging Review: View Queue"
    LINK = "Imaging Review: Link Studies"
    IGNORE = "Imaging Review: Ignore Studies"
    RETRY = "Imaging Review: Retry Studies"


@dataclass(frozen=True)
class Person:
    """A signed-in person: their OpenMRS username and the review privileges they hold."""

    username: str
    granted: frozenset[Privilege]

    def may(self, privilege: Privilege) -> bool:
        return privilege in self.granted

    @property
    def may_act(self) -> bool:
        return bool(self.granted - {Privilege.VIEW})


def person_of(user: OpenMRSUser) -> Person:
    """The review privileges of an OpenMRS user as the session resource lists them."""
    if SUPERUSER_ROLE in user.roles:
        return Person(user.username, frozenset(Privilege))
    return Person(user.username, frozenset(p for p in Privilege if p.value in user.privileges))
