"""Reads a folder of runs with TensorBoard's own code, as `tensorboard --logdir DIR` would, and
prints what it found as JSON for tests/tensorboard.rs: per run the scalars, images and texts
(EventMultiplexer, TensorBoard's event reader), and the HParams dashboard's answers (its plugin's
/experiment and /session_groups endpoints, served in-process).

Usage: python3 tests/tensorboard_read.py LOGDIR
"""
import json
import sys

from werkzeug import test, wrappers
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import hparams_plugin

logdir = sys.argv[1]
# size_guidance 0: keep every point (the default samples long series down).
mult = plugin_event_multiplexer.EventMultiplexer(
    size_guidance={"scalars": 0, "images": 0, "tensors": 0}
)
mult.AddRunsFromDirectory(logdir)
mult.Reload()

# TensorBoard's reader turns every summary into a tensor of its plugin (data_compat), as the
# dashboards see them: scalars a float, images [width, height, PNG], text a string.
runs = {run: {"scalars": {}, "images": {}, "texts": {}} for run in mult.Runs()}
for plugin, kind in [("scalars", "scalars"), ("images", "images"), ("text", "texts")]:
    for run, tags in mult.PluginRunToTagToContent(plugin).items():
        for tag in tags:
            points = []
            for e in mult.Tensors(run, tag):
                t = e.tensor_proto
                if kind == "scalars":
                    points.append([e.step, t.float_val[0] if t.float_val else t.double_val[0]])
                elif kind == "images":
                    points.append([e.step, int(t.string_val[0]), int(t.string_val[1]), len(t.string_val[2])])
                else:
                    points.append([e.step, t.string_val[0].decode()])
            runs[run][kind][tag] = points

provider = data_provider.MultiplexerDataProvider(mult, logdir)
context = base_plugin.TBContext(logdir=logdir, multiplexer=mult, data_provider=provider)
app = application.TensorBoardWSGI([hparams_plugin.HParamsPlugin(context)], data_provider=provider)
client = test.Client(app, wrappers.Response)


def post(path, body):
    r = client.post("/data/plugin/hparams/" + path, data=json.dumps(body), content_type="application/json")
    assert r.status_code == 200, (path, r.status, r.get_data())
    return json.loads(r.get_data())


experiment = post("experiment", {"experimentName": ""})
statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
groups = post(
    "session_groups",
    {"experimentName": "", "allowedStatuses": statuses, "colParams": [], "startIndex": 0, "sliceSize": 1000},
)
print(json.dumps({"runs": runs, "experiment": experiment, "session_groups": groups}))
