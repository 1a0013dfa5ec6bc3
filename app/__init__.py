"""The composition on top of the hub: the ``fulqrun-hub`` CLI tree, the runner and the demo bootstrap."""
