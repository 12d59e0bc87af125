"""The progress line of a run: done / running / pending nodes, from nipype's status callback."""

import time


class Progress:
    """A nipype ``status_callback`` that shows done / running / pending nodes on one updating line.

    Parameters
    ----------
    total : int
        Expected number of node executions (MapNode subnodes counted once each when known).
    stream : file, optional
        Where to write (default ``sys.stderr``); None keeps counts without printing.
    """

    def __init__(self, total, stream="stderr"):
        import sys

        self.total = int(total)
        self.stream = sys.stderr if stream == "stderr" else stream
        self.running = set()
        self.done = 0
        self.failed = 0
        self.events = []
        self.started = time.monotonic()
        self._last = (-1.0, -1)  # time and tenth of the work of the last line written to a log

    def __deepcopy__(self, memo):
        # nipype deep-copies plugin_args into MapNodes; the display must stay one shared object.
        return self

    def __getstate__(self):
        # Cluster plugins pickle nodes with their plugin_args; the copy in a job prints nothing.
        return {**self.__dict__, "stream": None}

    def __call__(self, node, status):
        name = node.fullname
        self.events.append((name, status))
        if status == "start":
            self.running.add(name)
        else:
            self.running.discard(name)
            if status == "end":
                self.done += 1
            elif status == "exception":
                self.failed += 1
        self.show()

    @property
    def pending(self):
        return max(self.total - self.done - self.failed - len(self.running), 0)

    def line(self):
        """The progress line: share done, done / running / pending (/ failed) counts, elapsed time.

        Returns
        -------
        str
            One line of text, without line terminator.
        """
        share = 100 * (self.done + self.failed) // max(self.total, 1)
        return (f"[glmx] {min(share, 100):3d}% nodes: {self.done} done, {len(self.running)} running, "
                f"{self.pending} pending" + (f", {self.failed} failed" if self.failed else "")
                + f" ({time.monotonic() - self.started:.0f} s)")

    def show(self, final=False):
        """Write the progress line to the stream.

        On a terminal the line overwrites itself; in a log file a line is written only per tenth of
        the work or every 10 s, unless ``final``.

        Parameters
        ----------
        final : bool, optional
            Write the line (ended by a newline) whatever the throttling.
        """
        if self.stream is None:
            return
        tty = self.stream.isatty()
        if not (tty or final):
            # a log file (SLURM job output, CI) gets a line per tenth of the work or per 10 s, not per event
            now, tenth = time.monotonic(), 10 * (self.done + self.failed) // max(self.total, 1)
            if tenth == self._last[1] and now - self._last[0] < 10:
                return
            self._last = (now, tenth)
        self.stream.write(self.line() + ("\r" if tty and not final else "\n"))
        self.stream.flush()


def count_nodes(wf):
    """Node executions a run of ``wf`` will report to the status callback.

    A MapNode reports each subnode and then itself; identity nodes report nothing. A MapNode whose
    iterfield comes from another node is counted with the longest list its sub-workflow is given
    (in glmx every MapNode of a subject iterates over that subject's runs).

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        Workflow to count.

    Returns
    -------
    int
        Expected number of node executions (the ``total`` of `Progress`).
    """
    from nipype.interfaces.utility import IdentityInterface
    from nipype.pipeline.engine import MapNode

    def lists(node, fields):
        values = [getattr(node.inputs, f, None) for f in fields]
        if isinstance(node, MapNode) and not all(isinstance(v, list) for v in values):
            return []  # some iterfield comes from a connection; what is set is only a default
        return [len(v) for v in values if isinstance(v, list) and v]

    nodes = list(wf._create_flat_graph().nodes())
    longest = {}
    for node in nodes:
        group = node.fullname.rsplit(".", 1)[0]
        fields = node.iterfield if isinstance(node, MapNode) else (
            node.inputs.copyable_trait_names() if isinstance(node.interface, IdentityInterface) else [])
        longest[group] = max([longest.get(group, 1), *lists(node, fields)])
    total = 0
    for node in nodes:
        if isinstance(node, MapNode):
            set_lengths = lists(node, node.iterfield)
            total += (max(set_lengths) if set_lengths else longest[node.fullname.rsplit(".", 1)[0]]) + 1
        elif not isinstance(node.interface, IdentityInterface):
            total += 1
    return total

