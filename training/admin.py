from django.contrib import admin

from .models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["number", "status", "embedder", "threshold", "created_at", "activated_at"]
    list_filter = ["status"]
    readonly_fields = ["created_at", "activated_at", "finished_at"]
