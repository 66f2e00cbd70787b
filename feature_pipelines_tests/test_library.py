"""The library as another project uses it: features found in its own package, prefixed feature sets side by
side, stores as Dagster resources checked at load time, and the CLI finding the project by itself."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from feature_pipelines import DefinitionError, ProfileError, build_defs
from feature_pipelines.cli import main
from feature_pipelines.orchestration.resources import (
    LocalStoreResource,
    RedisOnlineStoreResource,
    S3StoreResource,
    SQLiteOnlineStoreResource,
    resource_from_settings,
)
from feature_pipelines.registry import load_registry
from feature_pipelines.store import LocalStore

FEATURE_MODULE = '''
import polars as pl
from feature_pipelines import Entity, Rolling, Source, feature

store = Entity("store", join_key="store_id")
orders = Source("orders.parquet", timestamp="ts", base="data")


@feature(entities=[store], source=orders, granularity="daily", start="2024-01-01", end="2024-02-01",
         metrics=[Rolling(windows=["3d"], aggregations={{"total": ["sum", "count"]}})], online=True)
def {name}(events: pl.LazyFrame) -> pl.LazyFrame:
    return events
'''


def _orders(path: Path, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    n = 1500
    ts = np.datetime64("2024-01-01T00:00:00", "us") + rng.integers(0, 20 * 86_400_000_000, n).astype("timedelta64[us]")
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"store_id": rng.integers(0, 6, n).astype(str), "ts": ts, "total": rng.random(n) * 100}).write_parquet(path)


def _package(root: Path, modules: dict[str, str]) -> str:
    """A uniquely named package under `root` (put on sys.path) with the given `relative/module.py: source`."""
    name = f"userpkg_{uuid.uuid4().hex[:8]}"
    for rel, source in {"__init__.py": "", **modules}.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            init = root / parent / "__init__.py"
            if parent != Path(".") and not init.exists():
                init.write_text("")
        path.write_text(textwrap.dedent(source))
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return name


@pytest.fixture()
def user_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A project of its own (pyproject with [tool.feature_pipelines]) with a feature two sub-packages down."""
    for var in ("FEATURE_PIPELINES_ENV_DIR", "FEATURE_PIPELINES_PROFILE", "FEATURE_PIPELINES_DATA_DIR", "FEATURE_PIPELINES_PACKAGE"):
        monkeypatch.delenv(var, raising=False)
    package = _package(tmp_path, {"features/sales/daily.py": FEATURE_MODULE.format(name="store_sales")})
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "shop"\n\n[tool.feature_pipelines]\npackage = "{package}.features"\n')
    _orders(tmp_path / "data" / "orders.parquet")
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return tmp_path, package


# ---- discovery -------------------------------------------------------------------------------------------


def test_features_are_found_in_sub_packages(tmp_path: Path) -> None:
    package = _package(tmp_path, {"a/b/c/deep.py": FEATURE_MODULE.format(name="deep_sales"),
                                  "top.py": FEATURE_MODULE.format(name="top_sales"),
                                  "_private/hidden.py": FEATURE_MODULE.format(name="hidden_sales")})
    registry = load_registry(package)
    assert sorted(registry.features) == ["deep_sales", "top_sales"]
    assert registry.modules["deep_sales"] == f"{package}.a.b.c.deep"


def test_two_features_with_one_name_are_an_error_naming_both_modules(tmp_path: Path) -> None:
    package = _package(tmp_path, {"one/first.py": FEATURE_MODULE.format(name="sales"),
                                  "two/second.py": FEATURE_MODULE.format(name="sales")})
    with pytest.raises(DefinitionError) as err:
        load_registry(package)
    assert f"{package}.one.first" in str(err.value) and f"{package}.two.second" in str(err.value)


def test_an_unimportable_package_names_where_to_fix_it() -> None:
    with pytest.raises(DefinitionError, match=r"no_such_package_xyz.*\[tool.feature_pipelines\]"):
        load_registry("no_such_package_xyz.features")


# ---- prefixes ---------------------------------------------------------------------------------------------


def test_two_prefixed_feature_sets_and_the_users_own_assets_share_one_code_location(tmp_path: Path, monkeypatch) -> None:
    """Same feature names in two sets, plus a user asset and job named like the library's: no collision,
    and each set materializes into and publishes from its own stores."""
    monkeypatch.chdir(tmp_path)
    _orders(tmp_path / "data" / "orders.parquet")
    one = _package(tmp_path, {"f.py": FEATURE_MODULE.format(name="store_sales")})
    two = _package(tmp_path, {"f.py": FEATURE_MODULE.format(name="store_sales")})

    @dg.asset(name="store_sales")
    def users_own_asset() -> int:
        return 1

    users_job = dg.define_asset_job("publish_online", selection=[users_own_asset])
    sets = {
        prefix: build_defs(package, prefix=prefix, offline_store=LocalStoreResource(path=str(tmp_path / f"store_{prefix}")),
                           online_store=SQLiteOnlineStoreResource(path=str(tmp_path / f"online_{prefix}.sqlite")))
        for prefix, package in (("eu", one), ("us", two))
    }
    defs = dg.Definitions.merge(*sets.values(), dg.Definitions(assets=[users_own_asset], jobs=[users_job]))
    repo = defs.get_repository_def()  # validates: raises on any duplicate name
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == {"eu/store_sales", "us/store_sales", "store_sales", "eu/sources/orders", "us/sources/orders"}
    assert {"eu__store_sales_job", "us__store_sales_job", "eu__publish_online", "us__publish_online", "publish_online"} <= set(repo.job_names)
    assert {s.name for s in repo.sensor_defs} == {"eu__online_publish_sensor", "us__online_publish_sensor"}
    assert {"eu__feature_store", "eu__offline_store", "eu__online_store", "us__feature_store"} <= set(repo.get_top_level_resources())

    with dg.DagsterInstance.ephemeral() as instance:
        run = defs.resolve_job_def("eu__store_sales_job").execute_in_process(
            instance=instance, tags={"dagster/asset_partition_range_start": "2024-01-02", "dagster/asset_partition_range_end": "2024-01-04"})
        assert run.success
        assert [m.metadata["version"].value for m in run.asset_materializations_for_node("eu__store_sales")] == ["1.0.0"] * 3
        assert sorted(LocalStore(tmp_path / "store_eu").manifest("store_sales")["partitions"]) == ["2024-01-02", "2024-01-03", "2024-01-04"]
        assert not (tmp_path / "store_us").exists()
        # The eu sensor sees the eu materializations only, and its run publishes to the eu online store.
        tick = defs.resolve_sensor_def("eu__online_publish_sensor")(dg.build_sensor_context(instance=instance, definitions=defs))
        assert len(tick.run_requests) == 1
        assert tick.run_requests[0].run_config["ops"]["publish_partitions"]["config"]["partitions"] == ["2024-01-02", "2024-01-03", "2024-01-04"]
        assert not defs.resolve_sensor_def("us__online_publish_sensor")(dg.build_sensor_context(instance=instance, definitions=defs)).run_requests
        request = tick.run_requests[-1]
        published = defs.resolve_job_def("eu__publish_online").execute_in_process(run_config=request.run_config, instance=instance)
        assert published.success
        loaded = defs.load_asset_value(dg.AssetKey(["eu", "store_sales"]), partition_key="2024-01-03", instance=instance)
    assert loaded.height > 0 and set(loaded["store_id"]) <= {str(i) for i in range(6)}
    assert (tmp_path / "online_eu.sqlite").exists() and not (tmp_path / "online_us.sqlite").exists()


def test_a_bad_prefix_is_refused(tmp_path: Path) -> None:
    package = _package(tmp_path, {"f.py": FEATURE_MODULE.format(name="store_sales")})
    with pytest.raises(DefinitionError, match="prefix 'eu-west' is not valid"):
        build_defs(package, prefix="eu-west", offline_store=LocalStoreResource(path=str(tmp_path)), online_store=SQLiteOnlineStoreResource())


# ---- resources and settings, checked at load time -----------------------------------------------------------


def test_an_unset_store_variable_fails_at_load_time_naming_it(tmp_path: Path, monkeypatch) -> None:
    package = _package(tmp_path, {"f.py": FEATURE_MODULE.format(name="store_sales")})
    monkeypatch.delenv("FP_TEST_UNSET_BUCKET", raising=False)
    with pytest.raises(ProfileError, match="needs `bucket`.*FP_TEST_UNSET_BUCKET, which is not set"):
        build_defs(package, offline_store=S3StoreResource(bucket=dg.EnvVar("FP_TEST_UNSET_BUCKET")),
                   online_store=SQLiteOnlineStoreResource())


@pytest.mark.parametrize("settings, message", [
    ({"kind": "s4"}, r"offline_store kind 's4' is not supported; expected one of 'local', 's3', 'gcs', 'unity_catalog'"),
    ({"kind": "s3"}, r"needs `bucket`"),
    ({"kind": "s3", "bucket": "b", "secret_access_key": "x"}, r"unknown setting 'secret_access_key'.*credentials come from the environment"),
    ({"kind": "local", "path": "${FP_TEST_UNSET_PATH}"}, r"offline_store.path needs environment variable FP_TEST_UNSET_PATH"),
    ("local", r"offline_store must be a mapping"),
])
def test_wrong_offline_settings_are_one_clear_error(settings, message, monkeypatch) -> None:
    monkeypatch.delenv("FP_TEST_UNSET_PATH", raising=False)
    with pytest.raises(ProfileError, match=message):
        resource_from_settings(settings, "offline_store", "component x").check()


def test_wrong_online_settings_are_one_clear_error() -> None:
    with pytest.raises(ProfileError, match=r"online_store kind 'redis' settings are invalid: port"):
        resource_from_settings({"kind": "redis", "port": "not-a-port"}, "online_store", "profile p")


def test_secret_settings_stay_environment_variables_and_are_masked(monkeypatch) -> None:
    monkeypatch.setenv("FP_TEST_REDIS_PASSWORD", "hunter2-secret")
    resource = resource_from_settings({"kind": "redis", "url": "redis://:inline-pw@127.0.0.1:1/0", "password": "${FP_TEST_REDIS_PASSWORD}",
                                       "key_prefix": "team_keys"}, "online_store", "profile p")
    assert isinstance(resource.password, dg.EnvVar) and resource.password.env_var_name == "FP_TEST_REDIS_PASSWORD"
    assert resource.value("password") == "hunter2-secret"
    shown = resource.masked()
    assert shown["password"] == "${FP_TEST_REDIS_PASSWORD}" and shown["url"] == "redis://:****@127.0.0.1:1/0"
    assert shown["key_prefix"] == "team_keys"  # not a secret: shown as it is
    assert "hunter2-secret" not in repr(resource) + str(shown)


def test_relative_paths_resolve_against_the_project_not_the_working_directory(user_project, monkeypatch) -> None:
    root, _ = user_project
    (root / "deep" / "inside").mkdir(parents=True)
    monkeypatch.chdir(root / "deep" / "inside")
    assert LocalStoreResource(path="feature_store").store().path == str(root / "feature_store")
    resource = resource_from_settings({"kind": "sqlite"}, "online_store", "component", root / "elsewhere")
    assert resource.path == str(root / "elsewhere" / "online_store.sqlite")


# ---- the CLI and FeatureStore find the user's project ---------------------------------------------------------


def test_cli_finds_the_project_and_only_its_features(user_project, capsys) -> None:
    root, package = user_project
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "store_sales" in listed and "customer_spend" not in listed
    assert main(["build", "--start", "2024-01-01", "--end", "2024-01-05"]) == 0
    assert "store_sales: 5 partition(s)" in capsys.readouterr().out
    assert sorted(LocalStore(root / "feature_store").manifest("store_sales")["partitions"])[-1] == "2024-01-05"
    assert main(["publish"]) == 0
    assert f"sqlite:{root / 'online_store.sqlite'}" in capsys.readouterr().out

    from feature_pipelines import FeatureStore

    fs = FeatureStore()  # no registry, no profile: the project's package and the built-in dev stores
    try:
        online = fs.get_online_features(["store_sales"], [{"store_id": "1"}, {"store_id": "nope"}])
    finally:
        fs.close()
    assert online["store_sales__total_count_3d"][0] is not None and online["store_sales__total_count_3d"][1] is None


def test_profile_option_before_or_after_the_subcommand(user_project, capsys) -> None:
    root, _ = user_project
    (root / "env").mkdir()
    (root / "env" / "other.yaml").write_text("offline_store:\n  kind: local\n  path: other_store\n")
    outputs = []
    for argv in (["--profile", "other", "profile"], ["profile", "--profile", "other"]):
        assert main(argv) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    assert outputs[0]["profile"] == "other" and outputs[0]["settings"]["offline_store"]["path"] == str(root / "other_store")
    assert main(["build", "--start", "2024-01-02", "--end", "2024-01-02", "--profile", "other"]) == 0
    assert (root / "other_store" / "store_sales" / "_latest.json").exists() and not (root / "feature_store").exists()


def test_module_and_project_dir_options(user_project, tmp_path_factory, capsys, monkeypatch) -> None:
    root, package = user_project
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # no pyproject here
    assert main(["list", "--project-dir", str(root)]) == 0
    assert "store_sales" in capsys.readouterr().out
    extra = _package(root, {"more.py": FEATURE_MODULE.format(name="other_sales")})
    assert main(["--project-dir", str(root), "--module", extra, "list"]) == 0
    listed = capsys.readouterr().out
    assert "other_sales" in listed and "store_sales" not in listed
    assert main(["list"]) == 2
    assert "no features package configured" in capsys.readouterr().err


def test_a_missing_profile_lists_what_exists(user_project, capsys) -> None:
    assert main(["profile", "--profile", "prod"]) == 2
    assert "profile 'prod' not found" in capsys.readouterr().err


# ---- what the Dagster UI shows ------------------------------------------------------------------------------------


def _graphql(port: int, query: str) -> dict:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_resource_page_shows_the_stores_with_secrets_masked(tmp_path: Path) -> None:
    """The UI's resource page (through the webserver's own GraphQL API): every store resource is listed,
    a password given as ${VAR} shows as that environment variable, and its value appears nowhere."""
    import os
    import subprocess

    from feature_pipelines_tests.servers import free_port, wait_for

    package = _package(tmp_path, {"f.py": FEATURE_MODULE.format(name="store_sales")})
    (tmp_path / "location.py").write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from feature_pipelines import build_defs
        from feature_pipelines.orchestration.resources import resource_from_settings

        online = resource_from_settings({{"kind": "redis", "url": "redis://127.0.0.1:9/0", "password": "${{FP_UI_REDIS_PASSWORD}}",
                                         "key_prefix": "shop"}}, "online_store", "test")
        offline = resource_from_settings({{"kind": "local", "path": "store"}}, "offline_store", "test", {str(tmp_path)!r})
        defs = build_defs({package!r}, prefix="shop", offline_store=offline, online_store=online)
    '''))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = {**os.environ, "FP_UI_REDIS_PASSWORD": "correct-horse-battery", "DAGSTER_HOME": str(home)}
    log = (tmp_path / "webserver.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-f", "location.py", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        repos = wait_for(lambda: (_graphql(port, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
                                  ["data"]["repositoriesOrError"].get("nodes")),
                         what="dagster-webserver serving location.py", timeout=120, alive=lambda: proc.poll() is None,
                         detail=lambda: (tmp_path / "webserver.log").read_text()[-3000:], interval=0.5)
        selector = f'{{repositoryLocationName: "{repos[0]["location"]["name"]}", repositoryName: "{repos[0]["name"]}"}}'
        body = _graphql(port, f"{{ allTopLevelResourceDetailsOrError(repositorySelector: {selector}) {{ ... on ResourceDetailsList "
                              "{ results { name configuredValues { key value type } } } } }")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    resources = {r["name"]: {v["key"]: (v["value"], v["type"]) for v in r["configuredValues"]}
                 for r in body["data"]["allTopLevelResourceDetailsOrError"]["results"]}
    assert {"shop__feature_store", "shop__offline_store", "shop__online_store"} <= set(resources)
    assert resources["shop__online_store"]["password"] == ("FP_UI_REDIS_PASSWORD", "ENV_VAR")
    assert resources["shop__online_store"]["key_prefix"][0] == '"shop"'
    assert resources["shop__offline_store"]["path"][0] == json.dumps(str(tmp_path / "store"))
    assert "correct-horse-battery" not in json.dumps(body)


# ---- every online store kind is a profile / component setting ----------------------------------------------------

from feature_pipelines_tests.online_stores import aws_env, moto, postgres  # noqa: E402,F401  (session fixtures)


@pytest.mark.parametrize("kind", ["postgres", "dynamodb"])
def test_postgres_and_dynamodb_profiles_publish_and_serve(kind: str, user_project, request, monkeypatch, capsys) -> None:
    """`kind: postgres` / `kind: dynamodb` in a profile: the CLI publishes there and FeatureStore serves from there."""
    root, _ = user_project
    table = f"t{uuid.uuid4().hex[:8]}"
    if kind == "postgres":
        monkeypatch.setenv("FP_TEST_PG", request.getfixturevalue("postgres").conninfo)
        online = f"  kind: postgres\n  conninfo: ${{FP_TEST_PG}}\n  table: {table}\n  max_connections: 2\n"
    else:
        request.getfixturevalue("aws_env")
        monkeypatch.setenv("FP_TEST_DDB", request.getfixturevalue("moto").url)
        online = f"  kind: dynamodb\n  table: fp-{table}\n  region: us-east-1\n  endpoint_url: ${{FP_TEST_DDB}}\n"
    (root / "env").mkdir()
    (root / "env" / "served.yaml").write_text(f"online_store:\n{online}")
    assert main(["build", "--start", "2024-01-01", "--end", "2024-01-06", "--profile", "served"]) == 0
    assert main(["publish", "--profile", "served"]) == 0
    assert table in capsys.readouterr().out
    from feature_pipelines import FeatureStore

    fs = FeatureStore("served")
    try:
        newest = fs.offline.read("store_sales").sort("feature_timestamp").group_by("store_id").last().sort("store_id")
        online_rows = fs.get_online_features(["store_sales"], newest.select("store_id"))
    finally:
        fs.close()
    assert online_rows["store_sales__total_sum_3d"].to_list() == newest["total_sum_3d"].to_list()
    if kind == "postgres":
        shown = resource_from_settings({"kind": "postgres", "conninfo": "postgresql://app:pw-in-url@127.0.0.1:1/db"}, "online_store", "p").masked()
        assert shown["conninfo"] == "postgresql://app:****@127.0.0.1:1/db"


def test_profile_command_masks_credentials_in_urls_and_only_those(user_project, monkeypatch, capsys) -> None:
    """`feature-pipelines profile` and repr(): a password inside a URL (redis://, rediss://) or in REDIS_PASSWORD
    never shows; key_prefix, which is not a secret, does."""
    from feature_pipelines.profiles import load_profile

    root, _ = user_project
    (root / "env").mkdir()
    (root / "env" / "a.yaml").write_text("online_store:\n  kind: redis\n  url: ${REDIS_URL}\n  password: ${REDIS_PASSWORD:-}\n  key_prefix: team_a\n")
    (root / "env" / "b.yaml").write_text("online_store:\n  kind: redis\n  url: rediss://:literal-pw-123@cache.internal:6380/0\n")
    monkeypatch.setenv("REDIS_URL", "redis://:url-pw-456@cache.internal:6379/0")
    monkeypatch.setenv("REDIS_PASSWORD", "env-pw-789")
    for name in ("a", "b"):
        assert main(["profile", "--profile", name]) == 0
        shown = capsys.readouterr().out + repr(load_profile(name)) + str(load_profile(name).masked())
        assert not any(secret in shown for secret in ("literal-pw-123", "url-pw-456", "env-pw-789")), shown
    assert main(["profile", "--profile", "a"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]["online_store"]
    assert settings == {**settings, "url": "${REDIS_URL}", "password": "${REDIS_PASSWORD}", "key_prefix": "team_a"}
    assert main(["profile", "--profile", "b"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["online_store"]["url"] == "rediss://:****@cache.internal:6380/0"
