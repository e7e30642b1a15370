"""Clouds: the fleet's anycast clouds, unique per-enterprise delegation sets, and the checks
that keep the attack-resiliency rules of Akamai DNS (SIGCOMM 2020, §3.1 and §4.3.1) true:

- every enterprise is delegated to its own set of `set_size` (6) of the clouds (24), so an
  attack that saturates one enterprise's clouds leaves every other enterprise at least one;
- cross-enterprise (shared) zones such as the CDN's CNAME target zone use `shared_size` (13);
- no PoP advertises more than `max_per_pop` (2) clouds.
"""
