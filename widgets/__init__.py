"""diffstack's interactive views: ipywidgets controls and linked Bokeh panels."""
