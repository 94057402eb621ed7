"""vxtap-cni: the CNI plugin (spec 1.0: ADD, DEL, CHECK, VERSION) that joins a pod to vxtap.

The runtime runs it inside the node's network namespace, where etcd on loopback is not
reachable, so it talks to the node's agent over the agent's Unix control socket (a file).

1. Read the network config (stdin) and CNI_* variables.
2. ADD: ask the agent for `node_info` (bridge, MTU, this node's address block), then delegate
   interface and address setup to the standard `bridge` plugin with `host-local` IPAM over the
   node's block (found in CNI_PATH, same environment, exactly like flannel delegates). In a
   dual-stack network (config `subnet6`) host-local gets two ranges, the IPv4 block and the
   IPv6 block, and hands out one address of each. The delegate config is cached in `dataDir`
   for DEL/CHECK. Then `endpoint_add` with the addresses of the result (the agent writes the
   dual-stack endpoint record to etcd). If that fails the delegate is undone (DEL) and ADD fails.
   A failed ADD leaves nothing behind: no interface, no address, no cache file.
3. DEL: `endpoint_del`, then delegate DEL with the cached config, then drop the cache. Missing
   pieces are not errors (DEL is idempotent). When no agent listens on the socket (socket file
   gone, connection refused: the agent is stopped, maybe for good) DEL still tears the interface
   down and succeeds, logs that on stderr, and leaves a marker in `<dataDir>/pending-del/`: the
   next ADD or DEL that reaches an agent on this node deletes those records first; for a node
   that never comes back, `vxtap endpoint gc --node NODE` removes them. An agent that answers but
   cannot reach etcd makes DEL fail with code 11 (the runtime retries).
4. CHECK: delegate CHECK, then the endpoint record must exist with the interface's MAC and IPs.
5. Errors are CNI error JSON on stdout with a non-zero exit code, always with `cniVersion`,
   `code`, `msg` and `details`. A delegate's error is wrapped: its code if it is a well-known
   CNI code (< 100), else 101 (E_DELEGATE), its msg/details in ours.

Network config:

    {"cniVersion": "1.0.0", "name": "vxnet", "type": "vxtap-cni",
     "network": "vxnet",                                # which etcd network of the agent
     "agentSocket": "/run/vxtap/vxtap0.sock",           # default
     "dataDir": "/var/lib/cni/vxtap",                   # default
     "delegate": {"hairpinMode": true}}                 # optional, merged into the bridge config

"network" names the agent's etcd network the plugin joins pods to; it goes with every request,
so an agent serving several networks answers for the right one. Without it the requests name
none, which an agent with exactly one etcd network answers (as before).

or, instead of "agentSocket", write to etcd directly (only where etcd is reachable):

     "etcd": {"endpoints": "http://127.0.0.1:2379", "prefix": "/vxtap", "network": "vxnet",
              "node": "node1", "bridge": "br0", "mtu": 1450,
              "cafile": ..., "certfile": ..., "keyfile": ..., "username": ..., "password": ...}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple, NoReturn

from . import ctlclient
from .records import check_ifname, check_name, normalize_ip

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
CHECK_MIN_VERSION = (0, 4, 0)
DEFAULT_SOCKET = "/run/vxtap/vxtap0.sock"
DEFAULT_DATA_DIR = "/var/lib/cni/vxtap"
DELEGATE_TYPE = "bridge"

# CNI spec 1.0 well-known error codes
E_INCOMPATIBLE_VERSION = 1
E_UNSUPPORTED_FIELD = 2
E_UNKNOWN_CONTAINER = 3
E_INVALID_ENV = 4
E_IO = 5
E_DECODE = 6
E_INVALID_CONFIG = 7
E_TRY_AGAIN_LATER = 11
E_PLUGIN = 100                   # plugin-specific: the agent refused the request
E_DELEGATE = 101                 # plugin-specific: the bridge/host-local delegate failed


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg,
                "details": self.details}


class AgentGone(CniError):
    """Nobody listens on the agent socket (as opposed to an agent that answers with an error)."""


class DelegateError(CniError):
    """The delegate plugin failed with its own CNI error, wrapped: a well-known code (< 100) is
    kept (11 still means "try again"), anything else (bridge uses 999) becomes E_DELEGATE."""

    def __init__(self, plugin: str, command: str, payload: dict[str, Any]) -> None:
        try:
            code = int(payload.get("code", E_DELEGATE))
        except (TypeError, ValueError):
            code = E_DELEGATE
        msg = str(payload.get("msg", "")).strip() or "failed"
        details = str(payload.get("details", "")).strip()
        super().__init__(code if 0 < code < 100 else E_DELEGATE,
                         f"delegate {plugin} {command}: {msg}",
                         f"{details + '; ' if details else ''}delegate error code {code}")
        self.payload = payload


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


class PodAddrs(NamedTuple):
    """The container interface of a delegate result: its MAC and one address per family."""

    mac: str
    ip: str | None                # "10.244.1.2/16"
    gateway: str | None
    ip6: str | None               # "fd00:10:244:1::2/48"
    gateway6: str | None


# -- backends: the agent (default) or etcd directly ---------------------------------------------

class AgentBackend:
    def __init__(self, sock: str, network: str | None = None) -> None:
        self.sock = sock
        self.network = network

    def _call(self, op: str, **args: Any) -> Any:
        if self.network is not None:
            args["network"] = self.network
        try:
            return ctlclient.call(self.sock, op, **args)
        except ctlclient.AgentUnreachable as e:
            cls = AgentGone if not os.path.exists(self.sock) or "refused" in str(e) else CniError
            raise cls(E_TRY_AGAIN_LATER, "vxtap agent not reachable", str(e)) from None
        except ctlclient.AgentError as e:
            transient = str(e).startswith(("etcd unavailable", "etcd error", "control plane not ready"))
            raise CniError(E_TRY_AGAIN_LATER if transient else E_PLUGIN,
                           f"vxtap agent refused {op}", str(e)) from None

    def node_info(self) -> dict[str, Any]:
        info = self._call("node_info")
        if not isinstance(info, dict):
            raise CniError(E_PLUGIN, "vxtap agent sent a bad node_info", repr(info)[:200])
        return info

    def endpoint_add(self, container_id: str, ifname: str, addrs: PodAddrs) -> Any:
        return self._call("endpoint_add", container_id=container_id, ifname=ifname,
                          mac=addrs.mac, ip=addrs.ip, gateway=addrs.gateway, ip6=addrs.ip6,
                          gateway6=addrs.gateway6)

    def endpoint_del(self, container_id: str, ifname: str) -> Any:
        return self._call("endpoint_del", container_id=container_id, ifname=ifname)

    def endpoint_get(self, container_id: str, ifname: str) -> Any:
        return self._call("endpoint_get", container_id=container_id, ifname=ifname)


class EtcdBackend:
    """Direct etcd access (no agent): reads the node's block, writes the endpoint record."""

    def __init__(self, conf: dict[str, Any]) -> None:
        from .etcd import EtcdSettings
        from .keys import DEFAULT_PREFIX, Layout
        try:
            self.settings = EtcdSettings.from_text(
                str(conf["endpoints"]), cafile=conf.get("cafile"), certfile=conf.get("certfile"),
                keyfile=conf.get("keyfile"), username=conf.get("username"),
                password=conf.get("password"), timeout=float(conf.get("timeout", 5.0)))
            self.layout = Layout(str(conf.get("prefix", DEFAULT_PREFIX)), str(conf["network"]))
            self.node = check_name(conf["node"], "etcd.node")
            self.bridge = str(conf.get("bridge", "br0"))
            self.mtu = int(conf.get("mtu", 1450))
        except KeyError as e:
            raise CniError(E_INVALID_CONFIG, f"etcd section: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise CniError(E_INVALID_CONFIG, f"etcd section: {e}") from None
        self._client: Any = None

    def _run(self, fn: Any, *args: Any) -> Any:
        from .etcd import ETCD_ERRORS, connect, describe
        try:
            if self._client is None:
                self._client, _ = connect(self.settings, self.layout.config)
            return fn(self._client, *args)
        except ETCD_ERRORS as e:
            raise CniError(E_TRY_AGAIN_LATER, "etcd not reachable", describe(e)) from None
        except ValueError as e:
            raise CniError(E_PLUGIN, str(e)) from None

    def node_info(self) -> dict[str, Any]:
        from .endpoints import read_config
        from .ipam import BlockPlan, find_block

        def get(client: Any) -> dict[str, Any]:
            cfg = read_config(client, self.layout)
            block = find_block(client, self.layout, self.node)      # one key, not the prefix
            if block is None:
                raise ValueError(f"node {self.node!r} has no address block in network "
                                 f"{self.layout.network!r} (start its agent first)")
            return {"network": self.layout.network, "node": self.node, "vni": cfg.vni,
                    "mtu": self.mtu, "bridge": self.bridge,
                    **BlockPlan.of(block, cfg).to_dict()}
        return dict(self._run(get))

    def endpoint_add(self, container_id: str, ifname: str, addrs: PodAddrs) -> Any:
        from . import endpoints as eps

        def put(client: Any) -> Any:
            rec = eps.make_endpoint(eps.read_config(client, self.layout), self.node, addrs.mac,
                                    addrs.ip, addrs.gateway, addrs.ip6, addrs.gateway6)
            return eps.put_endpoint(client, self.layout, container_id, ifname, rec)
        return self._run(put)

    def endpoint_del(self, container_id: str, ifname: str) -> Any:
        from . import endpoints as eps
        return self._run(lambda c: eps.delete_endpoint(c, self.layout, container_id, ifname))

    def endpoint_get(self, container_id: str, ifname: str) -> Any:
        from . import endpoints as eps
        return self._run(lambda c: eps.get_endpoint(c, self.layout, container_id, ifname))


# -- the plugin ---------------------------------------------------------------------------------

class Plugin:
    def __init__(self, conf: dict[str, Any], env: Mapping[str, str]) -> None:
        self.conf = conf
        self.env = env
        self.version = str(conf.get("cniVersion", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise CniError(E_INCOMPATIBLE_VERSION,
                           f"unsupported cniVersion {self.version!r}",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
        name = conf.get("name")
        if not isinstance(name, str) or not name:
            raise CniError(E_INVALID_CONFIG, "network config: missing field 'name'")
        self.name = name
        self.data_dir = str(conf.get("dataDir", DEFAULT_DATA_DIR))
        extra = conf.get("delegate", {})
        if not isinstance(extra, dict):
            raise CniError(E_INVALID_CONFIG, "network config: 'delegate' must be an object")
        self.delegate_extra = extra
        if "etcd" in conf:
            if not isinstance(conf["etcd"], dict):
                raise CniError(E_INVALID_CONFIG, "network config: 'etcd' must be an object")
            self.backend: AgentBackend | EtcdBackend = EtcdBackend(conf["etcd"])
        else:
            sock = conf.get("agentSocket", DEFAULT_SOCKET)
            if not isinstance(sock, str) or not sock:
                raise CniError(E_INVALID_CONFIG, "network config: 'agentSocket' must be a path")
            network = conf.get("network")
            if network is not None:
                try:
                    check_name(network, "network")
                except ValueError as e:
                    raise CniError(E_INVALID_CONFIG, f"network config: {e}") from None
            self.backend = AgentBackend(sock, network)

    # environment

    def _env(self, name: str) -> str:
        value = self.env.get(name, "")
        if not value:
            raise CniError(E_INVALID_ENV, f"missing environment variable {name}")
        return value

    @property
    def container_id(self) -> str:
        cid = self._env("CNI_CONTAINERID")
        try:
            return check_name(cid, "CNI_CONTAINERID")
        except ValueError as e:
            raise CniError(E_INVALID_ENV, str(e)) from None

    @property
    def ifname(self) -> str:
        try:
            return check_ifname(self._env("CNI_IFNAME"), "CNI_IFNAME")
        except ValueError as e:
            raise CniError(E_INVALID_ENV, str(e)) from None

    def _cache_path(self) -> str:
        return os.path.join(self.data_dir, f"{self.container_id}-{self.ifname}.json")

    # delegate

    def delegate_conf(self, info: dict[str, Any]) -> dict[str, Any]:
        try:
            node = check_name(info["node"], "node")
            conf: dict[str, Any] = {
                "cniVersion": self.version, "name": self.name, "type": DELEGATE_TYPE,
                "bridge": str(info["bridge"]), "isGateway": True, "ipMasq": False,
                "mtu": int(info["mtu"]),
                "ipam": {
                    "type": "host-local",
                    "dataDir": os.path.join(self.data_dir, "ipam", node),
                    "ranges": [[{"subnet": str(info["subnet"]), "rangeStart": str(info["range_start"]),
                                 "rangeEnd": str(info["range_end"]), "gateway": str(info["gateway"])}]],
                },
            }
            if info.get("block6"):               # dual stack: one IPv6 address from the node's block6
                conf["ipam"]["ranges"].append([{
                    "subnet": str(info["subnet6"]), "rangeStart": str(info["range6_start"]),
                    "rangeEnd": str(info["range6_end"]), "gateway": str(info["gateway6"])}])
        except (KeyError, TypeError, ValueError) as e:
            raise CniError(E_PLUGIN, "vxtap agent sent an incomplete node_info", repr(e)) from None
        conf.update(self.delegate_extra)
        return conf

    def find_plugin(self, plugin_type: str) -> str:
        for d in self.env.get("CNI_PATH", "").split(":"):
            if d:
                path = os.path.join(d, plugin_type)
                if os.path.isfile(path) and os.access(path, os.X_OK):
                    return path
        raise CniError(E_INVALID_ENV, f"delegate plugin {plugin_type!r} not found in CNI_PATH",
                       self.env.get("CNI_PATH", ""))

    def exec_delegate(self, command: str, conf: dict[str, Any]) -> dict[str, Any] | None:
        path = self.find_plugin(str(conf.get("type", DELEGATE_TYPE)))
        env = dict(self.env, CNI_COMMAND=command)
        try:
            r = subprocess.run([path], check=False, input=json.dumps(conf).encode(), env=env,
                               capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CniError(E_IO, f"running delegate {path}", str(e)) from None
        out = r.stdout.strip()
        parsed: Any = None
        if out:
            try:
                parsed = json.loads(out)
            except ValueError:
                parsed = None
        if r.returncode != 0:
            if isinstance(parsed, dict) and ("code" in parsed or "msg" in parsed):
                raise DelegateError(os.path.basename(path), command, parsed)
            raise CniError(E_DELEGATE, f"delegate {os.path.basename(path)} {command} failed "
                           f"(exit {r.returncode})",
                           (r.stderr or r.stdout).decode(errors="replace")[:2000])
        if command == "ADD" and not isinstance(parsed, dict):
            raise CniError(E_PLUGIN, f"delegate {path} ADD printed no result",
                           r.stdout.decode(errors="replace")[:2000])
        return parsed if isinstance(parsed, dict) else None

    def _save_cache(self, conf: dict[str, Any]) -> None:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        tmp = self._cache_path() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(conf, f)
        os.replace(tmp, self._cache_path())

    def _load_cache(self) -> dict[str, Any] | None:
        try:
            with open(self._cache_path(), encoding="utf-8") as f:
                conf = json.load(f)
        except (OSError, ValueError):
            return None
        return conf if isinstance(conf, dict) else None

    def _drop_cache(self) -> None:
        try:
            os.unlink(self._cache_path())
        except FileNotFoundError:
            pass

    # records whose DEL could not reach the agent (see the module docstring, step 3)

    def _pending_dir(self) -> str:
        return os.path.join(self.data_dir, "pending-del")

    def _mark_pending(self, cid: str, ifname: str) -> None:
        os.makedirs(self._pending_dir(), mode=0o700, exist_ok=True)
        with open(os.path.join(self._pending_dir(), f"{cid}-{ifname}.json"), "w",
                  encoding="utf-8") as f:
            json.dump({"container_id": cid, "ifname": ifname}, f)

    def flush_pending(self) -> None:
        """Delete the records of earlier DELs that found no agent (best effort, quietly)."""
        try:
            names = sorted(os.listdir(self._pending_dir()))
        except OSError:
            return
        for fname in names:
            path = os.path.join(self._pending_dir(), fname)
            try:
                with open(path, encoding="utf-8") as f:
                    item = json.load(f)
                self.backend.endpoint_del(check_name(item["container_id"], "container_id"),
                                          check_ifname(item["ifname"]))
            except CniError:
                return                        # the agent is still not usable: keep them all
            except (OSError, ValueError, KeyError, TypeError):
                pass                          # an unreadable marker is dropped
            try:
                os.unlink(path)
            except OSError:
                pass

    def container_iface(self, result: dict[str, Any]) -> PodAddrs:
        """MAC and addresses (one per family) of the container-side interface in a CNI result."""
        ifaces = result.get("interfaces") or []
        idx = None
        for i, iface in enumerate(ifaces):
            if isinstance(iface, dict) and iface.get("name") == self.ifname and iface.get("sandbox"):
                idx = i
                break
        if idx is None:
            raise CniError(E_PLUGIN, f"delegate result has no container interface {self.ifname}",
                           json.dumps(result)[:2000])
        mac = ifaces[idx].get("mac")
        found: dict[bool, tuple[str, str | None]] = {}      # is IPv6 -> (address, gateway)
        for ip in result.get("ips") or []:
            if isinstance(ip, dict) and ip.get("interface") == idx and ip.get("address"):
                addr = str(ip["address"])
                gw = ip.get("gateway")
                found.setdefault(":" in addr, (addr, str(gw) if gw else None))
        if not found:
            raise CniError(E_PLUGIN, f"delegate result has no address on {self.ifname}",
                           json.dumps(result)[:2000])
        v4, v6 = found.get(False, (None, None)), found.get(True, (None, None))
        return PodAddrs(str(mac), v4[0], v4[1], v6[0], v6[1])

    # commands

    def add(self) -> dict[str, Any]:
        cid, ifname = self.container_id, self.ifname
        self._env("CNI_NETNS")
        info = self.backend.node_info()
        conf = self.delegate_conf(info)
        self.flush_pending()                  # a freed address may still be in etcd
        self._save_cache(conf)
        try:
            result = self.exec_delegate("ADD", conf)
            assert result is not None
            self.backend.endpoint_add(cid, ifname, self.container_iface(result))
        except BaseException:
            # undo whatever the delegate did (a failed bridge ADD may hold an address too)
            try:
                self.exec_delegate("DEL", conf)
            except CniError as e2:
                print(f"vxtap-cni: rollback of {cid}/{ifname} failed: {e2.msg} {e2.details}",
                      file=sys.stderr)
            self._drop_cache()
            raise
        return result

    def delete(self) -> None:
        cid, ifname = self.container_id, self.ifname
        pending: CniError | None = None
        agent_gone = False
        try:
            self.backend.endpoint_del(cid, ifname)
            self.flush_pending()
        except AgentGone as e:
            agent_gone = True
            self._mark_pending(cid, ifname)
            print(f"vxtap-cni: DEL {cid}/{ifname}: {e.msg} ({e.details}); removing the interface "
                  f"anyway. The endpoint record stays in etcd until the next ADD/DEL on this node "
                  f"reaches an agent, or `vxtap endpoint gc --node NODE` if the node is gone for "
                  f"good (marker in {self._pending_dir()})", file=sys.stderr)
        except CniError as e:
            pending = e                   # still tear the interface down, then report
        conf = self._load_cache()
        if conf is None and pending is None and not agent_gone:
            try:
                conf = self.delegate_conf(self.backend.node_info())
            except CniError:
                conf = None
        if conf is not None:
            if "prevResult" in self.conf:
                conf = dict(conf, prevResult=self.conf["prevResult"])
            self.exec_delegate("DEL", conf)
        if pending is not None:
            raise pending
        self._drop_cache()

    def check(self) -> None:
        if _version_tuple(self.version) < CHECK_MIN_VERSION:
            raise CniError(E_INCOMPATIBLE_VERSION, f"CHECK is not supported for cniVersion {self.version}")
        cid, ifname = self.container_id, self.ifname
        prev = self.conf.get("prevResult")
        if not isinstance(prev, dict):
            raise CniError(E_INVALID_CONFIG, "CHECK needs prevResult")
        conf = self._load_cache()
        if conf is None:
            raise CniError(E_PLUGIN, f"no ADD state for {cid}/{ifname} in {self.data_dir}")
        self.exec_delegate("CHECK", dict(conf, prevResult=prev))
        want = self.container_iface(prev)
        rec = self.backend.endpoint_get(cid, ifname)
        if not isinstance(rec, dict):
            raise CniError(E_PLUGIN, f"endpoint {cid}/{ifname} is not registered in etcd")
        ip6 = want.ip6
        if ip6 is not None:                       # etcd holds the canonical spelling
            try:
                ip6 = f"{normalize_ip(ip6)}/{ip6.partition('/')[2]}"
            except ValueError:
                pass
        if str(rec.get("mac", "")).lower() != want.mac.lower() or rec.get("ip") != want.ip \
                or rec.get("ip6") != ip6:
            raise CniError(E_PLUGIN, f"endpoint {cid}/{ifname} in etcd does not match the interface",
                           f"etcd {rec.get('mac')} {rec.get('ip')} {rec.get('ip6')}, interface "
                           f"{want.mac} {want.ip} {ip6}")


def run(stdin: bytes, env: Mapping[str, str]) -> tuple[int, dict[str, Any] | None]:
    """The whole plugin as a function: (exit code, JSON to print or None)."""
    command = env.get("CNI_COMMAND", "")
    version = "1.0.0"
    try:
        if command == "VERSION":
            return 0, {"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}
        if command not in ("ADD", "DEL", "CHECK"):
            raise CniError(E_INVALID_ENV, f"unknown CNI_COMMAND {command!r}")
        try:
            conf = json.loads(stdin)
        except (UnicodeDecodeError, ValueError) as e:
            raise CniError(E_DECODE, "network config is not valid JSON", str(e)) from None
        if not isinstance(conf, dict):
            raise CniError(E_DECODE, "network config is not a JSON object")
        if isinstance(conf.get("cniVersion"), str) and conf["cniVersion"] in SUPPORTED_VERSIONS:
            version = conf["cniVersion"]
        plugin = Plugin(conf, env)
        if command == "ADD":
            return 0, plugin.add()
        if command == "DEL":
            plugin.delete()
        else:
            plugin.check()
        return 0, None
    except CniError as e:
        return 1, e.to_dict(version)
    except Exception as e:  # noqa: BLE001 -- never a traceback instead of CNI error JSON
        return 1, CniError(E_PLUGIN, f"internal error: {type(e).__name__}", str(e)).to_dict(version)


def main() -> NoReturn:
    code, out = run(sys.stdin.buffer.read(), os.environ)
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
