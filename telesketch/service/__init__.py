"""The streaming service: gRPC ingestion, epochs, the query API, Prometheus and Grafana endpoints.

Modules: :mod:`.config` (defaults, TOML/JSON file, flags), :mod:`.sketchset` (the configured
sketches and how each query maps onto their public methods), :mod:`.epochs` (tumbling epochs,
snapshots, checkpoint, write-ahead log), :mod:`.queries` (windows and answers), :mod:`.server`
(``grpc.aio`` servicers, the bounded queue and sketch worker, auth), :mod:`.http` (``/metrics`` and
``/api/v1``), :mod:`.exactsketch` (the ``exact`` kind). No sketch arithmetic lives here.

Query API (gRPC ``telesketch.v1.Query``, HTTP ``/api/v1/...``)
-------------------------------------------------------------
Every query takes a *window*: ``epoch=<id>`` (``id = ts_ns // epoch_ns``) or ``last=<N>`` (the N
most recent retained epochs, the open one included unless ``closed_only``); default ``last=1``.
An epoch that is not retained, or fewer retained epochs than asked, is ``NOT_FOUND``. ``sketch``
picks a configured sketch by name; by default the first active one that answers the query.
Thresholds: ``phi`` (fraction of the window's packets N) or ``threshold`` (packets), never both;
with neither, the sketch's own default (HHH: the sketch's ``phi`` of the window's N, or its
configured absolute ``threshold`` per epoch). A threshold below what the sketch can report is
refused with ``FAILED_PRECONDITION`` naming its floor and the setting that lowers it, rather than
answered incompletely: Hidden Sketch never reports a key with at most ``thresh`` packets in every
epoch (``phi x expected_epoch_items - 10``: 240 with the defaults).

How a window of several epochs is answered (``WindowInfo.combine``):

* ``merged``: the epochs' states are merged (``merge``) and queried once (``exact`` kind);
* ``sum of per-epoch estimates`` (Hidden Sketch heavy hitters/changers, LLM-Sketch flow sizes):
  candidates are the keys reported in any epoch; a key's estimate is the sum over epochs of its
  reported estimate or, where not reported, the epoch's point estimate; the window threshold
  applies to the sum. Top flows: candidates are the flows in any epoch's top k, each ranked by the
  sum of its estimates in every epoch of the window;
* ``summed layer estimates`` (ResidualSketch HHH): per-layer estimates summed over the epochs, one
  discounted HHH pass (the sketch module's ``merged_hhh``), once per address family (IPv4 and IPv6
  trees side by side; gRPC: ``HHHRequest.families``, unset = IPv4 only);
* ``union`` (flow gaps): the gap events reported during each epoch, by time.

Heavy changers compare the window with the equally long window just before it.

``WindowInfo.partial`` (HTTP: a ``partial`` column): a Hidden Sketch decode behind the answer (some
epoch's or shard's) could not finish; the answer holds every key it recovered, keys may be missing
and some estimates are upper bounds (never under-counts). The sketch needs more memory for this
traffic (``telesketch size``); the service counts every such answer in
``telesketch_partial_answers_total`` and logs one WARNING per partial epoch, however often it is
read (``telesketch_sketch_partial_epochs_total``); an epoch closing with a load factor of 1 or more
is also warned about once and counted (``telesketch_sketch_overloaded_epochs_total``,
``telesketch_sketch_closed_load_factor``; :mod:`telesketch.service.overload`).

With the sketches on Ray shards (``shards > 1``, :mod:`telesketch.distributed.service`) even one
epoch is several states. ``exact`` is still ``merged`` (the answer of one process). Sketches whose
packets are routed by their own key (flows; sources for Hidden Sketch by source) answer per shard
and union the shards: ``owning shard, sum of per-epoch estimates`` (LLM-Sketch flow sizes), ``union
over shards of sums of per-epoch estimates`` (LLM-Sketch top flows, Hidden Sketch), ``union over
shards`` (Hidden Sketch changers). ResidualSketch sums the layer estimates of every shard and epoch
(``summed layer estimates``, at the configured T, not the shards' lower one). Gap events are the
shards' union, by time.
"""
from telesketch.service.config import ConfigError, ServiceConfig, load_config

__all__ = ["ConfigError", "ServiceConfig", "load_config"]
