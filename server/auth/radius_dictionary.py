"""The RADIUS attributes we send and read, as a pyrad dictionary (RFC 2865,
2866, 2869, 3162, 6911). Kept in the code, not a data file, so an installed
package needs nothing beside its modules."""

TEXT = """
ATTRIBUTE User-Name 1 string
ATTRIBUTE User-Password 2 string encrypt=1
ATTRIBUTE NAS-IP-Address 4 ipaddr
ATTRIBUTE NAS-Port 5 integer
ATTRIBUTE Service-Type 6 integer
ATTRIBUTE Framed-IP-Address 8 ipaddr
ATTRIBUTE Filter-Id 11 string
ATTRIBUTE Reply-Message 18 string
ATTRIBUTE State 24 octets
ATTRIBUTE Class 25 octets
ATTRIBUTE Session-Timeout 27 integer
ATTRIBUTE Idle-Timeout 28 integer
ATTRIBUTE Called-Station-Id 30 string
ATTRIBUTE Calling-Station-Id 31 string
ATTRIBUTE NAS-Identifier 32 string
ATTRIBUTE Proxy-State 33 octets
ATTRIBUTE Acct-Status-Type 40 integer
ATTRIBUTE Acct-Delay-Time 41 integer
ATTRIBUTE Acct-Input-Octets 42 integer
ATTRIBUTE Acct-Output-Octets 43 integer
ATTRIBUTE Acct-Session-Id 44 string
ATTRIBUTE Acct-Authentic 45 integer
ATTRIBUTE Acct-Session-Time 46 integer
ATTRIBUTE Acct-Terminate-Cause 49 integer
ATTRIBUTE Acct-Input-Gigawords 52 integer
ATTRIBUTE Acct-Output-Gigawords 53 integer
ATTRIBUTE Event-Timestamp 55 date
ATTRIBUTE NAS-Port-Type 61 integer
ATTRIBUTE Message-Authenticator 80 octets
ATTRIBUTE Acct-Interim-Interval 85 integer
ATTRIBUTE NAS-IPv6-Address 95 ipv6addr
ATTRIBUTE Framed-IPv6-Address 168 ipv6addr
"""

# Values (RFC 2865 section 5.6, 5.41; RFC 2866 section 5.1, 5.6)
SERVICE_TYPE_FRAMED = 2
NAS_PORT_TYPE_VIRTUAL = 5
ACCT_STATUS = {"start": 1, "stop": 2, "interim": 3}
ACCT_AUTHENTIC_RADIUS = 1
