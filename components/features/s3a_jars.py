"""Put Hadoop's S3A connector beside a Spark distribution's jars: ``python s3a_jars.py JARS_DIR``.

Used by Dockerfile.spark. The versions are read, not chosen: hadoop-aws must equal the Hadoop client the
distribution embeds (``hadoop-client-api-<version>.jar``), and the AWS SDK v2 bundle must be the one that
Hadoop version was built against (``aws-java-sdk-v2.version`` in ``hadoop-project-<version>.pom``); a
mismatch shows up only at run time (NoSuchMethodError when S3A starts). The analytics accelerator and
wildfly-openssl are added when that POM names them. Each jar is checked against Maven Central's SHA-1.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import urllib.request
from pathlib import Path

MAVEN = "https://repo1.maven.org/maven2"
# (group path, artifact, POM property holding its version; None: Hadoop's own version), required or not.
JARS = (
    ("org/apache/hadoop", "hadoop-aws", None, True),
    ("software/amazon/awssdk", "bundle", "aws-java-sdk-v2.version", True),
    (
        "software/amazon/s3/analyticsaccelerator",
        "analyticsaccelerator-s3",
        "amazon-s3-analyticsaccelerator-s3.version",
        False,
    ),
    ("org/wildfly/openssl", "wildfly-openssl", "openssl-wildfly.version", False),
)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as response:  # a fixed https host
        return response.read()


def hadoop_version(jars: Path) -> str:
    """The Hadoop client version the distribution embeds."""
    (jar,) = jars.glob("hadoop-client-api-*.jar")
    return jar.stem.removeprefix("hadoop-client-api-")


def pom_property(pom: str, name: str) -> str | None:
    """A ``<name>value</name>`` property of a POM."""
    found = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", pom)
    return found.group(1).strip() if found else None


def install(jars: Path) -> list[Path]:
    """Download the connector's jars into ``jars``; returns them."""
    hadoop = hadoop_version(jars)
    pom = _get(f"{MAVEN}/org/apache/hadoop/hadoop-project/{hadoop}/hadoop-project-{hadoop}.pom").decode()
    written = []
    for group, artifact, prop, required in JARS:
        version = hadoop if prop is None else pom_property(pom, prop)
        if version is None:
            if required:
                raise SystemExit(f"hadoop-project-{hadoop}.pom has no {prop}")
            continue
        url = f"{MAVEN}/{group}/{artifact}/{version}/{artifact}-{version}.jar"
        data = _get(url)
        expected = _get(url + ".sha1").decode().split()[0]
        if hashlib.sha1(data).hexdigest() != expected:  # what Maven Central publishes
            raise SystemExit(f"{url}: SHA-1 mismatch")
        path = jars / f"{artifact}-{version}.jar"
        path.write_bytes(data)
        written.append(path)
        print(f"{path.name} ({len(data):,} bytes)", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    """Install the S3A jars for the distribution whose jars directory is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jars", type=Path, help="The distribution's jars directory (pyspark/jars).")
    install(parser.parse_args(argv).jars)
    return 0


if __name__ == "__main__":
    sys.exit(main())
