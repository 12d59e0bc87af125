"""glmx_workflows.io"""
