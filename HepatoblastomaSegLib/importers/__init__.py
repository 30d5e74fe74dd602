"""Importing models trained elsewhere into bundles of ours (``hbseg import``)."""
