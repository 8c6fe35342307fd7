"""The RadLoop model zoo as installable data: ``shared.zoo.zoo_root`` finds this folder when RadLoop is
installed outside its repository. Nothing here is imported at run time; the folder is located with
``importlib.util.find_spec``."""
