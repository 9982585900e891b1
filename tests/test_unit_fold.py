"""Pure tier: nodeset.fold, the inverse of expand, as --gather's headers
use it (``lab01 lab02 lab03 lab05`` is ``lab[01-03,05]``)."""

import random

import pytest

from clstr.nodeset import expand, fold, natural_key

# What ClusterShell 1.9.1's ``nodeset -f`` prints for the same names: users
# of clush and pdsh read these forms, and may paste them back.
AS_NODESET_WRITES_THEM = [
    ("lab01 lab02 lab03 lab05", "lab[01-03,05]"),
    ("n9 n10", "n[9-10]"),
    ("n09 n10", "n[09-10]"),
    ("n9 n10 n09", "n[9,09-10]"),
    ("n01 n1 n001", "n[1,01,001]"),
    ("n099 n100 n101 n1000", "n[099-101,1000]"),
    ("n0 n00 n1", "n[0-1,00]"),
    ("n5 n6 n10 n11 n07", "n[5-6,07,10-11]"),
    ("n0 n1 n2 n3 n4 n5 n6 n7 n8 n9 n10", "n[0-10]"),
    ("a b c1 c2", "a,b,c[1-2]"),
    ("b a c", "a,b,c"),
    ("lab01 node1 lab02 node2 x", "lab[01-02],node[1-2],x"),
    ("a1b a2b a3b", "a[1-3]b"),
    ("r1n1 r1n2 r2n1 r2n2", "r[1-2]n[1-2]"),
    ("r1n1 r1n2 r2n1", "r1n[1-2],r2n1"),
    ("a1b1 a1b2 a2b1 a2b2 a3b1", "a[1-2]b[1-2],a3b1"),
    ("rack1-node01 rack1-node02 rack2-node01 rack2-node02 rack3-node01",
     "rack[1-2]-node[01-02],rack3-node01"),
    ("10.0.0.1 10.0.0.2 10.0.1.1", "10.0.0.[1-2],10.0.1.1"),
]


@pytest.mark.parametrize("names, folded", AS_NODESET_WRITES_THEM)
def test_fold_writes_what_clustershell_nodeset_writes(names, folded):
    assert fold(names.split()) == folded


def test_a_plain_number_joins_the_padded_range_of_its_length():
    # n10 could be written plainly or padded to 2: padded, it continues n09.
    assert fold(["n08", "n09", "n10", "n11"]) == "n[08-11]"
    assert fold(["n8", "n9", "n10", "n11"]) == "n[8-11]"


def test_fold_lists_names_without_numbers_and_ipv6_addresses_as_they_are():
    assert fold(["gateway", "::1", "fe80::2%eth0", "login"]) == "::1,fe80::2%eth0,gateway,login"


def test_fold_keeps_the_user_of_user_at_host():
    assert fold(["me@lab01", "me@lab02", "you@lab01"]) == "me@lab[01-02],you@lab01"


def test_fold_sorts_as_people_count_and_ignores_input_order_and_duplicates():
    names = ["node%d" % n for n in (10, 9, 100, 11)] + ["lab2", "lab10", "node9"]
    assert fold(names) == "lab[2,10],node[9-11,100]"
    shuffled = list(names)
    random.Random(7).shuffle(shuffled)
    assert fold(shuffled) == fold(names)
    assert natural_key("node9") < natural_key("node10") < natural_key("node010")


def _random_names(rng):
    """Host names as clusters have them: several prefixes and suffixes,
    padded and plain numbers (mixed), racks and nodes, names without
    numbers."""
    def number():
        return str(rng.randint(0, 120)).zfill(rng.choice([0, 0, 1, 2, 3]))
    makers = [lambda: rng.choice(["lab", "node", "n", "me@gpu"]) + number(),
              lambda: "rack" + number() + "-node" + number(),
              lambda: "c" + number() + "-ib" + number() + ".example",
              lambda: rng.choice(["login", "gw", "fe80::1", "storage-a"])]
    return {rng.choice(makers)() for _ in range(rng.randint(1, 60))}


def test_fold_round_trips_through_expand():
    rng = random.Random(24)
    for _ in range(500):
        names = _random_names(rng)
        folded = fold(sorted(names))
        assert set(expand(folded)) == names, folded
        # No name twice: a group's size is its count of names.
        assert len(expand(folded)) == len(names), folded


@pytest.mark.parametrize("spec", ["node[001-003,007]", "b[1-2],x9", "lab[01-40]",
                                  "r[1-4]n[01-16]", "e-c07kilf[901-912]"])
def test_fold_gives_back_the_spec_that_expand_read(spec):
    assert fold(expand(spec)) == spec
